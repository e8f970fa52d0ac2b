/**
 * The Worker that verifies a checkpoint for the agent (src/agent/verify.ts): reading and checking
 * every page of a large checkpoint takes seconds of synchronous work, which on the agent's own
 * thread would stall every split VM's page channel it serves.
 */
/// <reference lib="deno.worker" />
import { verifyCheckpoint } from "../ckpt/inspect.ts";

/** What the agent asks. */
export interface VerifyJob {
  /** Checkpoint directory (a generation or a store). */
  path: string;
  /** Verify only the fragments on this host, and name the others. */
  localOnly: boolean;
}

/** What the Worker answers: the verification, or the error's name and one-line message. */
export type VerifyAnswer =
  | { ok: true; result: ReturnType<typeof verifyCheckpoint> }
  | { ok: false; name: string; message: string };

self.onmessage = (e: MessageEvent<VerifyJob>) => {
  let answer: VerifyAnswer;
  try {
    answer = { ok: true, result: verifyCheckpoint(e.data.path, e.data.localOnly) };
  } catch (err) {
    const error = err instanceof Error ? err : new Error(String(err));
    answer = { ok: false, name: error.name, message: error.message };
  }
  self.postMessage(answer);
  self.close();
};
