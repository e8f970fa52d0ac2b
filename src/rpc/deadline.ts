/**
 * Waiting in time, the one place dcres does it: sleeps, a turn of the event loop, a wait bounded by a
 * timer, and deadlines and cancellation as typed RPC errors (a promise raced against a timer or a
 * signal). It sits at the bottom of src/ and imports nothing but the RPC errors.
 */
import { RpcError } from "./errors.ts";

/** Resolves after `ms` milliseconds. */
export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** Resolves after the I/O and timers that are due have had their turn (a yield to the event loop). */
export function nextTurn(): Promise<void> {
  return sleep(0);
}

/**
 * `p`'s value, or undefined once `ms` have passed while `p` runs on (nobody waits for it any more);
 * rejects when `p` does in time.
 */
export async function within<T>(p: Promise<T>, ms: number): Promise<T | undefined> {
  let t: ReturnType<typeof setTimeout> | undefined;
  try {
    return await Promise.race([
      p,
      new Promise<undefined>((r) => t = setTimeout(() => r(undefined), ms)),
    ]);
  } finally {
    clearTimeout(t);
  }
}

/** The longest deadline a peer's call gets; a longer one is cut to it (docs/SECURITY.md, "Bounds"). */
export const MAX_DEADLINE_MS = 3_600_000;

/**
 * A promise that rejects when `signal` aborts: with its reason when that is an RpcError (a deadline,
 * the caller's cancel), else with RpcError("cancelled"). Without a signal it never settles.
 */
export function rejectOnAbort(signal: AbortSignal | undefined): Promise<never> {
  return new Promise((_, rej) => {
    const fail = () =>
      rej(
        signal!.reason instanceof RpcError
          ? signal!.reason
          : new RpcError("cancelled", "the call was cancelled"),
      );
    if (signal?.aborted) fail();
    else signal?.addEventListener("abort", fail, { once: true });
  });
}

/**
 * `p`, or RpcError("deadline-exceeded") naming `what` once `ms` have passed; `onTimeout` sees that
 * error first (to tell the other side).
 */
export function withTimeout<T>(
  p: Promise<T>,
  ms: number,
  what: string,
  onTimeout?: (e: RpcError) => void,
): Promise<T> {
  let t: ReturnType<typeof setTimeout>;
  return Promise.race([
    p,
    new Promise<T>((_, rej) =>
      t = setTimeout(() => {
        const e = new RpcError("deadline-exceeded", `${what} timed out after ${ms} ms`);
        onTimeout?.(e);
        rej(e);
      }, ms)
    ),
  ]).finally(() => clearTimeout(t));
}
