/** Verifying a checkpoint, or scrubbing stores, off the agent's event loop, in a Worker of its own. */
import type { verifyCheckpoint } from "../ckpt/inspect.ts";
import { RpcError } from "../rpc/errors.ts";
import type { VerifyAnswer, VerifyJob } from "./verify_worker.ts";
import type { ScrubbedFile } from "../ckpt/scrub.ts";

/** A verification that failed, as the Worker reported it: the checkpoint's own error, by name. */
export class VerifyError extends Error {
  /** `name` is the original error's class name; `message` its one line. */
  constructor(name: string, message: string) {
    super(message);
    this.name = name;
  }
}

/**
 * `verifyCheckpoint(path, localOnly)` run in a Worker, so the agent keeps serving page channels
 * and other calls meanwhile; `signal` (the call's deadline or cancel) stops the Worker.
 */
export function verifyOffLoop(
  path: string,
  localOnly: boolean,
  signal?: AbortSignal,
): Promise<ReturnType<typeof verifyCheckpoint>> {
  return offLoop({ kind: "verify", path, localOnly }, signal) as Promise<
    ReturnType<typeof verifyCheckpoint>
  >;
}

/** `scrubStores(root, store)` run in a Worker (at `rate` bytes/s when given), as {@link verifyOffLoop}. */
export function scrubOffLoop(
  root: string,
  store?: string,
  signal?: AbortSignal,
  rate?: number,
): Promise<ScrubbedFile[]> {
  return offLoop({ kind: "scrub", root, store, rate }, signal) as Promise<ScrubbedFile[]>;
}

/** `scrubGeneration(dir, file)` run in a Worker, as {@link verifyOffLoop}. */
export function scrubGenerationOffLoop(dir: string, file?: string): Promise<ScrubbedFile[]> {
  return offLoop({ kind: "scrub-generation", dir, file }) as Promise<ScrubbedFile[]>;
}

/** Runs `job` in a Worker of its own; `signal` stops it. */
function offLoop(job: VerifyJob, signal?: AbortSignal): Promise<unknown> {
  const worker = new Worker(new URL("./verify_worker.ts", import.meta.url), { type: "module" });
  const { promise, resolve, reject } = Promise.withResolvers<unknown>();
  const stop = () => {
    worker.terminate();
    reject(signal?.reason ?? new RpcError("cancelled", "the verification was cancelled"));
  };
  if (signal?.aborted) stop();
  signal?.addEventListener("abort", stop, { once: true });
  worker.onmessage = (e: MessageEvent<VerifyAnswer>) => {
    signal?.removeEventListener("abort", stop);
    worker.terminate();
    if (e.data.ok) resolve(e.data.result);
    else reject(new VerifyError(e.data.name, e.data.message));
  };
  worker.onerror = (e) => {
    e.preventDefault();
    signal?.removeEventListener("abort", stop);
    worker.terminate();
    reject(new VerifyError("Error", `the verification Worker failed: ${e.message}`));
  };
  worker.postMessage(job);
  return promise;
}
