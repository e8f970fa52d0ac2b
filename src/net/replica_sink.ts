/**
 * A fragment's replica on another agent, written while the fragment is: one `ckpt.replicate` call
 * whose upload is the file's bytes in order. The agent there writes them aside and makes the copy
 * durable when the upload ends; the call's reply says it is. The writer's pace is the slower of its
 * disk and this stream: a write resolves once its bytes are queued in a bounded inbox.
 */
import type { FragmentSink } from "../ckpt/fragment_sink.ts";
import { Inbox } from "../rpc/inbox.ts";
import type { CallOptions } from "./stream_call.ts";
import type { RpcClient } from "./quic.ts";

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
  readonly #call: ReplicaCall;
  #done?: Promise<void>;
  #error?: Error;

  /** A replica reached through `call`; the call is made with the first bytes. */
  constructor(call: ReplicaCall, readonly target: ReplicaTarget) {
    this.#call = call;
  }

  /**
   * A replica on the agent at `addr`, over a connection of its own made with the first bytes
   * (`connect` authenticates as this agent) and closed when the copy is done or abandoned.
   */
  static overConnection(
    connect: (addr: string) => Promise<RpcClient>,
    addr: string,
    target: ReplicaTarget,
  ): FragmentSink {
    let client: Promise<RpcClient> | undefined;
    const close = async () => {
      const c = await client?.catch(() => undefined);
      await c?.close();
    };
    const sink = new ReplicaSink(async (m, a, o) => {
      client = connect(addr);
      return await (await client).call(m, a, o);
    }, target);
    return {
      write: (b) => sink.write(b),
      finish: async () => {
        try {
          await sink.finish();
        } finally {
          await close();
        }
      },
      abort: async () => {
        await sink.abort();
        await close();
      },
    };
  }

  /** The call, started once. */
  #started(): Promise<void> {
    if (this.#done) return this.#done;
    const { store, file, maxBytes, host } = this.target;
    this.#done = this.#call("ckpt.replicate", { store, file, maxBytes }, {
      upload: this.#inbox,
      deadlineMs: 3_600_000,
      signal: this.#abort.signal,
    }).then(
      () => {},
      (e) => {
        this.#error = new Error(`copy of ${file} on ${host}: ${(e as Error).message}`);
        throw this.#error;
      },
    );
    // Seen by write() and finish(); a rejection nobody awaits yet is not unhandled.
    this.#done.catch(() => {});
    return this.#done;
  }

  /** Queues `bytes` for the replica; rejects once the replica has failed. */
  async write(bytes: Uint8Array): Promise<void> {
    const done = this.#started();
    for (let o = 0; o < bytes.length; o += PIECE) {
      if (this.#error) throw this.#error;
      await Promise.race([this.#inbox.push(bytes.subarray(o, o + PIECE)), done]);
    }
    if (this.#error) throw this.#error;
  }

  /** Ends the stream; resolves once the replica is durable. */
  async finish(): Promise<void> {
    const done = this.#started();
    this.#inbox.end();
    await done;
  }

  /** Cancels the stream (if it began): the agent there removes what it wrote. */
  async abort(): Promise<void> {
    this.#inbox.end(new Error("the fragment was abandoned"));
    this.#abort.abort();
    await this.#done?.catch(() => {});
  }
}
