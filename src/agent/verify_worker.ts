/**
 * The Worker that verifies or scrubs checkpoints for the agent (src/agent/verify.ts): reading and
 * checking every page of a large checkpoint takes seconds of synchronous work, which on the agent's
 * own thread would stall every split VM's page channel it serves.
 */
/// <reference lib="deno.worker" />
import { verifyCheckpoint } from "../ckpt/inspect.ts";
import { type ScrubbedFile, scrubGeneration, scrubStores } from "../ckpt/scrub.ts";

/** What the agent asks: one checkpoint verified, or stores scrubbed. */
export type VerifyJob =
  | {
    kind: "verify";
    /** Checkpoint directory (a generation or a store). */
    path: string;
    /** Verify only the fragments on this host, and name the others. */
    localOnly: boolean;
  }
  | {
    kind: "scrub";
    /** The checkpoint root. */
    root: string;
    /** Only this store. */
    store?: string;
    /** Bytes per second to keep to (a background scrub); absent: full speed. */
    rate?: number;
  }
  | {
    kind: "scrub-generation";
    /** The generation directory whose fragments here are checked. */
    dir: string;
    /** Only this fragment of it. */
    file?: string;
  };

/** What the Worker answers: the result, or the error's name and one-line message. */
export type VerifyAnswer =
  | { ok: true; result: ReturnType<typeof verifyCheckpoint> | ScrubbedFile[] }
  | { ok: false; name: string; message: string };

self.onmessage = (e: MessageEvent<VerifyJob>) => {
  let answer: VerifyAnswer;
  try {
    const job = e.data;
    answer = {
      ok: true,
      result: job.kind === "verify"
        ? verifyCheckpoint(job.path, job.localOnly)
        : job.kind === "scrub"
        ? scrubStores(job.root, job.store, { rate: job.rate })
        : scrubGeneration(job.dir, job.file),
    };
  } catch (err) {
    const error = err instanceof Error ? err : new Error(String(err));
    answer = { ok: false, name: error.name, message: error.message };
  }
  self.postMessage(answer);
  self.close();
};
