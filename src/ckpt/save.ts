/**
 * Takes a checkpoint of a running machine on this host, in one of three modes (docs/FORMAT.md,
 * "Modes"): stop (pause, save, resume), precopy (save while running, coldest pages first, re-save
 * dirtied pages in rounds, short final pause) and cow (consistency point at the start; pages are
 * write-protected and copied aside before the guest's first write to them).
 */
import { join, relative } from "node:path";
import { SyscallError } from "../ffi/errors.ts";
import { DirtyTracker } from "../memory/dirty_tracker.ts";
import type { Machine } from "../vmm/machine.ts";
import { PAGE } from "./format.ts";
import { FragmentWriter, type PageSource } from "./fragment_writer.ts";
import {
  type CheckpointMode,
  type CheckpointStats,
  commitManifest,
  type FragmentRef,
  type Manifest,
} from "./manifest.ts";
import { CheckpointStore } from "./store.ts";
import { buildPageMap, overlayPageMap } from "./page_map.ts";
import { type CowSaver, CowSession } from "./cow.ts";
import { AccelCowSession } from "./cow_accel.ts";

/** dcres version recorded in every manifest. */
export const DCRES_VERSION = "0.1.0";

/** What to checkpoint and how. */
export interface CheckpointOptions {
  /** Store directory. */
  dir: string;
  /** Mode (default precopy). */
  mode: CheckpointMode;
  /** Save only pages written since the previous checkpoint in this store. */
  incremental: boolean;
  /** zstd chunks. */
  compress: boolean;
  /** Precopy: stop iterating once the rest fits this pause. */
  maxDowntimeMs: number;
  /** Called as bytes are written. */
  onProgress?: (done: number, total: number) => void;
  /** Called with the vCPUs paused at the consistency point (tests compare restored memory with it). */
  onConsistencyPoint?: () => void;
}

/** The result of a checkpoint. */
export interface CheckpointReport {
  /** Store directory. */
  dir: string;
  /** Generation written. */
  generation: number;
  /** Checkpoint id. */
  id: string;
  /** Mode. */
  mode: CheckpointMode;
  /** Parent generation, or null. */
  parent: number | null;
  /** Counts and timings. */
  stats: Manifest["stats"];
}

/** A checkpoint could not be taken; the previous one is intact. */
export class CheckpointError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "CheckpointError";
  }
}

const HOST = "main";
const BATCH = 16384;
const MAX_ROUNDS = 30;
/** Pause cost besides page writes (stop vCPUs, read the dirty log, capture state), in the estimate. */
const PAUSE_OVERHEAD_MS = 10;

/** Pages in `gfns` ordered coldest first (never or longest-ago dirty first). */
export function coldestFirst(gfns: ArrayLike<number>, lastDirty: Uint32Array): number[] {
  return byEpoch(gfns, lastDirty, false);
}

/**
 * Counting sort of gfns by the epoch each was last dirty (epochs are small: one per dirty-log read),
 * gfn order within an epoch kept; linear, so it can run inside a pause.
 */
function byEpoch(gfns: ArrayLike<number>, lastDirty: Uint32Array, newestFirst: boolean): number[] {
  let max = 0;
  for (let i = 0; i < gfns.length; i++) max = Math.max(max, lastDirty[gfns[i]]);
  const start = new Uint32Array(max + 2);
  for (let i = 0; i < gfns.length; i++) {
    const e = lastDirty[gfns[i]];
    start[(newestFirst ? max - e : e) + 1]++;
  }
  for (let e = 1; e < start.length; e++) start[e] += start[e - 1];
  const out = new Array<number>(gfns.length);
  for (let i = 0; i < gfns.length; i++) {
    const e = lastDirty[gfns[i]];
    out[start[newestFirst ? max - e : e]++] = gfns[i];
  }
  return out;
}

/**
 * The generation an incremental checkpoint builds on (undefined for a full one), checked against
 * the VM's dirty log and memory size.
 */
export function checkParent(
  store: CheckpointStore,
  tracker: DirtyTracker,
  opts: Pick<CheckpointOptions, "dir" | "incremental">,
  memSize: number,
): ReturnType<CheckpointStore["latest"]> {
  const parent = opts.incremental ? store.latest() : undefined;
  if (opts.incremental && !parent) {
    throw new CheckpointError(
      `--incremental: ${opts.dir} has no committed checkpoint to build on; take a full one first`,
    );
  }
  // A merged generation is the checkpoint it squashed: the dirty log counts from either.
  const base = tracker.baselineId;
  if (parent && parent.manifest.id !== base && parent.manifest.mergedFromId !== base) {
    throw new CheckpointError(
      `--incremental: generation ${parent.manifest.generation} in ${opts.dir} is not the checkpoint this VM's dirty log counts from; take a full checkpoint first`,
    );
  }
  if (parent && parent.manifest.machine.spec.memSize !== memSize) {
    throw new CheckpointError(
      `--incremental: memory size changed since generation ${parent.manifest.generation}`,
    );
  }
  return parent;
}

/** Counts and timings of a checkpoint about to be taken (one round, nothing saved yet). */
export function emptyStats(): CheckpointStats {
  return {
    pagesSaved: 0,
    zeroPages: 0,
    pagesReused: 0,
    pagesSavedTwice: 0,
    bytesWritten: 0,
    rounds: 1,
    downtimeMs: 0,
    totalMs: 0,
  };
}

/** A fresh random checkpoint id, as bytes and as hex. */
export function newCheckpointId(): { id: string; idBytes: Uint8Array } {
  const idBytes = crypto.getRandomValues(new Uint8Array(16));
  return { idBytes, id: Array.from(idBytes, (b) => b.toString(16).padStart(2, "0")).join("") };
}

/** Removes a generation directory that will not be committed. */
export function removeGeneration(dir: string): void {
  try {
    Deno.removeSync(dir, { recursive: true });
  } catch {
    // Nothing to clean.
  }
}

/** The error to report for a failed save: a full disk is named, with what to do. */
export function saveError(e: unknown, store: string, generation: number): unknown {
  if (e instanceof SyscallError && e.errno === 28) {
    return new CheckpointError(
      `${store}: disk full while writing generation ${generation}; free space and retry (the previous checkpoint is intact)`,
    );
  }
  return e;
}

/** Takes one checkpoint of `m`; on any failure removes the partial generation and rethrows. */
export async function takeCheckpoint(
  m: Machine,
  tracker: DirtyTracker,
  opts: CheckpointOptions,
): Promise<CheckpointReport> {
  const t0 = performance.now();
  const store = new CheckpointStore(opts.dir);
  const parent = checkParent(store, tracker, opts, m.spec.memSize);
  const { generation, dir } = store.begin();
  const { id, idBytes } = newCheckpointId();
  const fragPath = join(dir, `${HOST}.frag`);
  const writer = FragmentWriter.create(fragPath, {
    checkpointId: idBytes,
    generation,
    compress: opts.compress,
  });
  const mem = m.vm.memory;
  const src: PageSource = { bytes: mem.view(), base: mem.hostAddr };
  const pages = mem.pages;
  let txn: ReturnType<DirtyTracker["begin"]> | undefined;
  let paused = false;
  let cow: CowSaver | undefined;
  const stats = emptyStats();
  try {
    let state: Manifest["machine"];
    if (opts.mode === "stop" || opts.mode === "cow") {
      if (opts.mode === "cow") {
        // The accelerator's own copy-on-write when it has one (the emulated CPU's write hook),
        // else userfaultfd write-protection.
        cow = m.vm.hasCow ? new AccelCowSession(m.vm) : await CowSession.prepare(mem);
      }
      // Read the dirty log once while running, so the read inside the pause finds few pages.
      if (cow) tracker.sample();
      const tp = performance.now();
      await m.vm.pause();
      paused = true;
      txn = tracker.begin();
      tracker.seal();
      state = m.save();
      opts.onConsistencyPoint?.();
      const pick = parent ? txn.bits : undefined;
      if (opts.mode === "stop") {
        const todo = coldestFirst(
          pick ? DirtyTracker.gfns(pick, pages) : allGfns(pages),
          tracker.lastDirty,
        );
        await writeAll(writer, todo, src, opts);
        m.vm.resume();
        paused = false;
        stats.downtimeMs = performance.now() - tp;
      } else {
        cow!.arm(pick);
        m.vm.resume();
        paused = false;
        stats.downtimeMs = performance.now() - tp;
        const todo = coldestFirst(
          pick ? DirtyTracker.gfns(pick, pages) : allGfns(pages),
          tracker.lastDirty,
        );
        await cow!.save(writer, todo, BATCH, opts.onProgress);
        cow!.close();
        cow = undefined;
      }
    } else {
      txn = tracker.begin();
      let todo = coldestFirst(
        parent ? DirtyTracker.gfns(txn.bits.slice(), pages) : allGfns(pages),
        tracker.lastDirty,
      );
      let rate = 1e9; // bytes/s, refined after the first round
      for (;;) {
        const tr = performance.now();
        const before = writer.bytesWritten;
        await writeAll(writer, todo, src, opts);
        const secs = (performance.now() - tr) / 1000;
        if (writer.bytesWritten > before && secs > 0) rate = (writer.bytesWritten - before) / secs;
        const dirty = DirtyTracker.gfns(tracker.sample(), pages);
        const fits = PAUSE_OVERHEAD_MS + (dirty.length * PAGE) / rate * 1000 <= opts.maxDowntimeMs;
        if (fits || stats.rounds >= MAX_ROUNDS || dirty.length >= todo.length) {
          const tp = performance.now();
          await m.vm.pause();
          paused = true;
          const last = new Set(dirty);
          for (const g of DirtyTracker.gfns(tracker.sample(), pages)) last.add(g);
          tracker.seal();
          state = m.save();
          opts.onConsistencyPoint?.();
          await writeAll(writer, coldestFirst([...last], tracker.lastDirty), src, opts);
          m.vm.resume();
          paused = false;
          stats.downtimeMs = performance.now() - tp;
          break;
        }
        todo = coldestFirst(dirty, tracker.lastDirty);
        stats.rounds++;
      }
    }
    const sum = await writer.finish();
    const frag: FragmentRef = {
      path: relative(opts.dir, join(dir, `${HOST}.frag`)),
      host: HOST,
      generation,
      footerCrc: sum.footerCrc,
      pages: sum.pages,
      bytes: sum.fileBytes,
    };
    const fragments = parent ? [...parent.manifest.fragments, frag] : [frag];
    const pageMap = parent
      ? overlayPageMap(parent.manifest.pageMap, sum.gfns, fragments.length - 1)
      : buildPageMap(pages, 0);
    stats.pagesSaved = sum.pages - sum.zeroPages;
    stats.zeroPages = sum.zeroPages;
    stats.pagesReused = pages - sum.pages;
    stats.pagesSavedTwice = sum.rewrites;
    stats.bytesWritten = sum.dataBytes;
    stats.totalMs = performance.now() - t0;
    const manifest: Manifest = {
      dcresVersion: DCRES_VERSION,
      id,
      vm: m.spec.name,
      generation,
      parent: parent ? parent.manifest.generation : null,
      createdAt: new Date().toISOString(),
      mode: opts.mode,
      compressed: opts.compress,
      machine: state!,
      fragments,
      pageMap,
      prefetchOrder: prefetchOrder(tracker.lastDirty),
      stats,
    };
    commitManifest(dir, manifest);
    tracker.commit(txn);
    tracker.baselineId = id;
    return { dir: opts.dir, generation, id, mode: opts.mode, parent: manifest.parent, stats };
  } catch (e) {
    cow?.close();
    cow = undefined;
    await writer.abort();
    if (txn) tracker.abort(txn);
    if (paused && !m.vm.isStopped) m.vm.resume();
    removeGeneration(dir);
    throw saveError(e, opts.dir, generation);
  }
}

function allGfns(pages: number): number[] {
  return Array.from({ length: pages }, (_, i) => i);
}

/** Gfns most recently dirty first: the order lazy restore prefetches in. */
export function prefetchOrder(lastDirty: Uint32Array): Uint32Array {
  return Uint32Array.from(byEpoch(allGfns(lastDirty.length), lastDirty, true));
}

async function writeAll(
  w: FragmentWriter,
  gfns: number[],
  src: PageSource,
  opts: CheckpointOptions,
): Promise<void> {
  const total = gfns.length * PAGE;
  for (let i = 0; i < gfns.length; i += BATCH) {
    await w.append(gfns.slice(i, i + BATCH), src);
    opts.onProgress?.(Math.min(i + BATCH, gfns.length) * PAGE, total);
  }
  await w.flush();
}
