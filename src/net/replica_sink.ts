/**
 * A fragment's replica on another agent, written while the fragment is: one `ckpt.replicate` call
 * whose upload is the file's bytes in order. The agent there writes them aside and makes the copy
 * durable when the upload ends; the call's reply says it is. The writer's pace is the slower of its
 * disk and this stream: a write resolves once its bytes are queued in a bounded inbox.
 */
import type { FragmentSink } from "../ckpt/fragment_sink.ts";
import { Inbox } from "../rpc/inbox.ts";
import type { CallOptions } from "./stream_call.ts";

/** How a replica is reached: a call on a connection to its agent. */
export type ReplicaCall = (
  method: string,
  args: Record<string, unknown>,
  opts: CallOptions,
) => Promise<unknown>;

/** Bytes per DATA frame of a replica stream. */
const PIECE = 256 * 1024;

/** What a replica stream says about its copy. */
export interface ReplicaTarget {
  /** The host holding the copy, named in errors and the manifest. */
  host: string;
  /** Store (the VM's name) the copy goes into. */
  store: string;
  /** The copy's path there, `gNNNNNN/WRITER.frag`, the same as the original's. */
  file: string;
  /** An upper bound on the file's size, which the agent there reserves before the first byte. */
  maxBytes: number;
}

/** A replica of one fragment, streamed to another agent while the fragment is written. */
export class ReplicaSink implements FragmentSink {
  readonly #inbox = new Inbox();
  readonly #abort = new AbortController();
  readonly #done: Promise<void>;
  #error?: Error;

  constructor(call: ReplicaCall, readonly target: ReplicaTarget) {
    const { store, file, maxBytes } = target;
    this.#done = call("ckpt.replicate", { store, file, maxBytes }, {
      upload: this.#inbox,
      deadlineMs: 3_600_000,
      signal: this.#abort.signal,
    }).then(
      () => {},
      (e) => {
        this.#error = new Error(`copy of ${file} on ${target.host}: ${(e as Error).message}`);
        throw this.#error;
      },
    );
    // Seen by write() and finish(); a rejection nobody awaits yet is not unhandled.
    this.#done.catch(() => {});
  }

  /** Queues `bytes` for the replica; rejects once the replica has failed. */
  async write(bytes: Uint8Array): Promise<void> {
    for (let o = 0; o < bytes.length; o += PIECE) {
      if (this.#error) throw this.#error;
      await Promise.race([this.#inbox.push(bytes.slice(o, o + PIECE)), this.#done]);
    }
    if (this.#error) throw this.#error;
  }

  /** Ends the stream; resolves once the replica is durable. */
  async finish(): Promise<void> {
    this.#inbox.end();
    await this.#done;
  }

  /** Cancels the stream: the agent there removes what it wrote. */
  async abort(): Promise<void> {
    this.#inbox.end(new Error("the fragment was abandoned"));
    this.#abort.abort();
    await this.#done.catch(() => {});
  }
}
