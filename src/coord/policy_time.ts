/**
 * The arithmetic of checkpoint policies, pure so it can be checked fast and for any input: when a
 * VM's next checkpoint is due (jittered per VM so hosts do not all start at once), how long a failed
 * one waits before it is tried again, and which checkpoints are full.
 */

/** The most the first checkpoint of a VM is spread after the coordinator starts leading. */
export const FIRST_SPREAD_MS = 60_000;
/** The most each next checkpoint is spread after its period, as a share of the period. */
export const NEXT_SPREAD = 0.1;
/** The most each next checkpoint is spread after its period. */
export const NEXT_SPREAD_MS = 30_000;
/** The first retry's wait after a failed checkpoint; each further failure doubles it. */
export const RETRY_BASE_MS = 1000;

/** A number in [0, 1) that depends only on `vm` and `n` (FNV-1a), so every coordinator agrees. */
export function jitter(vm: string, n: number): number {
  let h = 0x811c9dc5;
  for (const c of new TextEncoder().encode(`${vm}#${n}`)) {
    h ^= c;
    h = Math.imul(h, 0x01000193) >>> 0;
  }
  return h / 2 ** 32;
}

/** The newest committed checkpoint of a VM, as its due time needs it. */
export interface Newest {
  /** Its recovery point (ms since the epoch). */
  timeMs: number;
  /** Its generation. */
  generation: number;
}

/**
 * When `vm`'s next checkpoint is due: a period after its newest one, plus a little jitter that
 * depends on the VM and that generation (so a restarted coordinator computes the same time), or,
 * with none yet, spread over up to a period (at most {@link FIRST_SPREAD_MS}) after `sinceMs`.
 * Never before a period has passed since the newest.
 */
export function dueAt(
  vm: string,
  everyMs: number,
  newest: Newest | undefined,
  sinceMs: number,
): number {
  if (!newest) return sinceMs + Math.floor(jitter(vm, 0) * Math.min(everyMs, FIRST_SPREAD_MS));
  const spread = Math.min(everyMs * NEXT_SPREAD, NEXT_SPREAD_MS);
  return newest.timeMs + everyMs + Math.floor(jitter(vm, newest.generation) * spread);
}

/** The wait before retrying after `failures` (≥ 1) failures in a row: doubling, at most a period. */
export function retryDelay(failures: number, everyMs: number): number {
  return Math.min(everyMs, RETRY_BASE_MS * 2 ** Math.min(Math.max(failures, 1) - 1, 30));
}

/**
 * Whether the checkpoint after `newest` is full: always without `incremental` or without a newest
 * one; else every `fullEvery`-th generation (1, 1 + fullEvery, ...), never when `fullEvery` is 0.
 */
export function isFull(
  incremental: boolean,
  fullEvery: number,
  newest: Newest | undefined,
): boolean {
  if (!incremental || !newest) return true;
  return fullEvery > 0 && newest.generation % fullEvery === 0;
}
