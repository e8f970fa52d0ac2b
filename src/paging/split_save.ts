/**
 * The page-saving phase of a split VM's parallel checkpoint, between the participants' begin and
 * commit: precopy rounds, the pause, the consistency point, and the rounds that leave every page
 * with a copy. It reaches the VM, the pager and the dirty log only through `SplitSaveRun` and the
 * hosts through `SplitCheckpoint`'s I/O, so the simulation (tests/helpers/split_sim.ts) runs this
 * very loop.
 */
import type { CheckpointMode } from "../ckpt/manifest.ts";
import { fitsPause } from "../ckpt/transaction.ts";
import type { DirtyTracker, DirtyTransaction } from "../memory/dirty_tracker.ts";
import type { SplitCheckpoint } from "./split_session.ts";
import { PAGE_SIZE } from "../accel/accel.ts";

/** Rounds of precopy before the pause, and of saving after the point, at most (within the bound
 * `fragmentBound` counts on, MAX_PRECOPY_ROUNDS). */
const MAX_ROUNDS = 10;
/** Waits for pages on the move to land, after a round that saved nothing, at most. */
const MAX_WAITS = 10_000;
/** Write rate assumed before the first round measured one. */
const FIRST_RATE = 200e6;

/** The VM, its pager and its dirty log as the saving phase drives them. */
export interface SplitSaveRun {
  /** stop, precopy or cow. */
  mode: CheckpointMode;
  /** Precopy stops its rounds once the rest fits this pause. */
  maxDowntimeMs: number;
  /** The VM's dirty log. */
  tracker: DirtyTracker;
  /** Stops the vCPUs. */
  pause(): Promise<unknown>;
  /** Lets the vCPUs run again. */
  resume(): void;
  /** With the vCPUs paused, lets the page moves under way finish. */
  drain(): Promise<void>;
  /** The consistency point: vCPUs paused, paging drained, dirty log sealed (machine state here). */
  atPoint(): void;
  /** A short wait while pages move (a timer; an event in the simulation). */
  wait(): Promise<void>;
  /** Milliseconds on a monotonic clock (the simulation's own). */
  now(): number;
  /** Pages with a copy so far, of all. */
  onProgress?(done: number, total: number): void;
}

/** What the saving phase leaves for the commit. */
export interface SplitSaveResult {
  /** The dirty bits taken: commit them with the checkpoint, or give them back. */
  txn: DirtyTransaction;
  /** Runs of [first gfn, count, fragment index] over all pages. */
  pageMap: Uint32Array;
  /** Rounds before the pause (1 for stop and cow). */
  rounds: number;
  /** How long the vCPUs were paused. */
  downtimeMs: number;
}

/**
 * Saves every page of the split VM into the fragments of `c` as it was at one instant. On failure
 * the VM runs again, its dirty bits go back to the tracker and the error is thrown; the caller
 * aborts the participants.
 */
export async function saveSplitPages(
  c: SplitCheckpoint,
  run: SplitSaveRun,
): Promise<SplitSaveResult> {
  const { tracker } = run, pages = c.book.pages;
  const txn = tracker.begin();
  let paused = false, rounds = 1, downtimeMs = 0, tp = 0;
  try {
    c.written(txn.bits);
    tracker.onSample = (bits) => c.written(bits);
    if (run.mode === "precopy") {
      let rate = FIRST_RATE;
      for (;; rounds++) {
        const before = c.book.missing();
        const tr = run.now();
        await c.round(tracker.lastDirty);
        const secs = (run.now() - tr) / 1000;
        if (secs > 0 && before) rate = Math.max(rate / 4, (before * PAGE_SIZE) / secs);
        tracker.sample();
        const left = c.book.missing();
        run.onProgress?.(pages - left, pages);
        const fits = fitsPause(left, rate, run.maxDowntimeMs);
        if (fits || rounds >= MAX_ROUNDS || left >= before) break;
      }
    }
    tp = run.now();
    await run.pause();
    paused = true;
    const own = c.ownership, holderAtPoint = new Uint8Array(pages);
    await c.point(run.mode === "cow", async () => {
      await run.drain();
      tracker.sample();
      tracker.onSample = undefined;
      tracker.seal();
      run.atPoint();
      for (let g = 0; g < pages; g++) holderAtPoint[g] = own.holderOf(g);
    });
    if (run.mode === "cow") {
      run.resume();
      paused = false;
      downtimeMs = run.now() - tp;
    }
    // Stop and precopy save the rest paused; cow with the guest running, in rounds until every
    // page has its copy (a page that moved meanwhile was saved before it left).
    for (let idle = 0, waits = 0; c.book.missing() > 0;) {
      const before = c.book.missing();
      await c.round(tracker.lastDirty);
      if (c.book.missing() < before) continue;
      // Nobody claims a page on the move: without waiting for those moves, a page moving between
      // sub-hosts would use up every round at once and fail the checkpoint.
      if (c.movingUnsaved() > 0 && waits++ < MAX_WAITS) await run.wait();
      else if (++idle >= MAX_ROUNDS) {
        throw new Error(`${c.book.missing()} pages could not be saved`);
      }
    }
    c.unfreeze();
    const pageMap = c.book.pageMap((g) => holderAtPoint[g]);
    if (paused) {
      run.resume();
      paused = false;
      downtimeMs = run.now() - tp;
    }
    run.onProgress?.(pages, pages);
    return { txn, pageMap, rounds, downtimeMs };
  } catch (e) {
    c.unfreeze();
    tracker.onSample = undefined;
    if (paused) run.resume();
    tracker.abort(txn);
    throw e;
  }
}
