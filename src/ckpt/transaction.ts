/**
 * One checkpoint transaction, for a VM on one host and for a split VM over many: begin on every
 * participant, save the pages (a strategy: stop, precopy or cow on one host; the parallel save of a
 * split VM), finish every fragment, commit the manifest everywhere (the local participant last: its
 * copy is the one the next incremental builds on), or abort everywhere, leaving the previous
 * checkpoint as it was. A single host is the one-participant case.
 */
import { join, relative } from "node:path";
import { Errno, SyscallError } from "../ffi/errors.ts";
import type { DirtyTracker, DirtyTransaction } from "../memory/dirty_tracker.ts";
import { type FragmentSummary, FragmentWriter } from "./fragment_writer.ts";
import type { FragmentSink } from "./fragment_sink.ts";
import {
  type CheckpointMode,
  type CheckpointStats,
  commitManifest,
  encodeManifest,
  type FragmentRef,
  type Manifest,
} from "./manifest.ts";
import { prefetchOrder } from "./order.ts";
import type { RetentionReport } from "./retention.ts";
import { CheckpointStore } from "./store.ts";
import { DCRES_VERSION } from "./format.ts";
import { PAGE_SIZE } from "../accel/accel.ts";

/** The pause a precopy checkpoint aims at when none is asked for. */
export const DEFAULT_MAX_DOWNTIME_MS = 50;
/** Pause cost besides page writes (stop vCPUs, read the dirty log, capture state), in the estimate. */
const PAUSE_OVERHEAD_MS = 10;

/** True when writing `pages` more pages at `bytesPerSec` fits a pause of `maxDowntimeMs`. */
export function fitsPause(pages: number, bytesPerSec: number, maxDowntimeMs: number): boolean {
  return PAUSE_OVERHEAD_MS + (pages * PAGE_SIZE) / bytesPerSec * 1000 <= maxDowntimeMs;
}

/** What to checkpoint and how. */
export interface CheckpointOptions {
  /** Store directory. */
  dir: string;
  /** Mode (callers default to DEFAULT_CHECKPOINT_MODE). */
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
  /** With `--keep`: what the store kept, and removed on each host, once it committed. */
  retention?: RetentionReport;
}

/** A checkpoint could not be taken; the previous one is intact. */
export class CheckpointError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "CheckpointError";
  }
}

/** A participant's finished fragment, as the manifest and the statistics need it. */
export type ParticipantFragment = Omit<FragmentSummary, "gfns"> & {
  /** Path of the fragment, relative to the store directory. */
  path: string;
  /** The gfns it indexes (the local fragment's, for its page map). */
  gfns?: FragmentSummary["gfns"];
  /** Hosts that hold a durable copy of it besides its writer. */
  copies?: string[];
};

/** One host writing a fragment of the checkpoint. */
export interface CheckpointParticipant {
  /** Its name in the manifest. */
  readonly host: string;
  /** Prepares its fragment. */
  begin(): Promise<void>;
  /** Makes its fragment durable and indexed. */
  finish(): Promise<ParticipantFragment>;
  /** Commits the manifest there. */
  commit(bytes: Uint8Array, manifest: Manifest): Promise<void>;
  /** Removes what it wrote of this checkpoint; must not throw. */
  abort(): Promise<void>;
}

/** The generation being written. */
export interface CheckpointBegun {
  generation: number;
  /** Its directory in the local store. */
  dir: string;
  id: string;
  idBytes: Uint8Array;
  /** The generation it builds on (an incremental), if any. */
  parent: ReturnType<CheckpointStore["latest"]>;
  /** Fragment index of the first fragment this generation writes. */
  base: number;
}

/** What a page-saving strategy leaves: every page has its copy, as of one instant. */
export interface SavedPages {
  /** Dirty bits taken: committed with the checkpoint, or given back by the transaction. */
  txn: DirtyTransaction;
  /** Machine state at the consistency point. */
  machine: Manifest["machine"];
  /** Page map over all fragments (undefined: the local participant's pages over the parent's). */
  pageMap?: Uint32Array;
  /** Precopy rounds. */
  rounds: number;
  /** How long the vCPUs were paused. */
  downtimeMs: number;
}

/** A checkpoint: who takes part and how pages are saved. */
export interface CheckpointPlan {
  opts: CheckpointOptions;
  tracker: DirtyTracker;
  /** The VM's name and memory. */
  vm: string;
  memSize: number;
  /**
   * Runs once the parent is known, before anything is written (every participant reachable);
   * returns the newest generation any other participant holds, which the new one must pass. A
   * checkpoint killed between the other participants' commits and the local one leaves such a
   * generation behind, which no manifest here names; it is left alone, never reused.
   */
  ready?(): Promise<number>;
  /** The participants; the first is this host's, whose manifest commits last. */
  participants(begun: CheckpointBegun): CheckpointParticipant[];
  /** Saves the pages; on failure it cleans up its own (resumes the VM, gives back its bits). */
  save(begun: CheckpointBegun): Promise<SavedPages>;
  /** Page map from the local fragment's pages, when `save` gives none. */
  localPageMap?(begun: CheckpointBegun, local: ParticipantFragment): Uint32Array;
  /** Adds what this kind of checkpoint records besides (a split VM's hosts). */
  extend?(m: Manifest): Manifest;
}

/** The generation an incremental builds on, checked against the dirty log and memory size. */
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
  if (e instanceof SyscallError && e.errno === Errno.ENOSPC) {
    return new CheckpointError(
      `${store}: disk full while writing generation ${generation}; free space and retry (the previous checkpoint is intact)`,
    );
  }
  return e;
}

/** Statistics from the finished fragments and the page map. */
function statsOf(
  frags: ParticipantFragment[],
  pageMap: Uint32Array,
  base: number,
  saved: SavedPages,
): CheckpointStats {
  let reused = 0;
  for (let i = 0; i < pageMap.length; i += 3) if (pageMap[i + 2] < base) reused += pageMap[i + 1];
  return {
    pagesSaved: frags.reduce((a, s) => a + s.pages - s.zeroPages, 0),
    zeroPages: frags.reduce((a, s) => a + s.zeroPages, 0),
    pagesReused: reused,
    pagesSavedTwice: frags.reduce((a, s) => a + s.rewrites, 0),
    bytesWritten: frags.reduce((a, s) => a + s.dataBytes, 0),
    rounds: saved.rounds,
    downtimeMs: saved.downtimeMs,
    totalMs: 0,
  };
}

/**
 * Runs the checkpoint `plan` describes; returns its report and manifest. On failure no participant
 * keeps any of it, the dirty bits go back to the tracker, and the previous checkpoint is whole.
 */
export async function runCheckpoint(
  plan: CheckpointPlan,
): Promise<{ report: CheckpointReport; manifest: Manifest }> {
  const t0 = performance.now();
  const { opts, tracker } = plan;
  const store = new CheckpointStore(opts.dir);
  const parent = checkParent(store, tracker, opts, plan.memSize);
  const { generation, dir, release } = store.begin((await plan.ready?.()) ?? 0);
  const { id, idBytes } = newCheckpointId();
  const base = parent ? parent.manifest.fragments.length : 0;
  const begun: CheckpointBegun = { generation, dir, id, idBytes, parent, base };
  let all: CheckpointParticipant[] = [];
  let txn: DirtyTransaction | undefined;
  try {
    all = plan.participants(begun);
    // Every begin settles before a failure is thrown, so each abort reaches its host after it.
    await settleAll(all.map((p) => p.begin()));
    const saved = await plan.save(begun);
    txn = saved.txn;
    const frags = await settleAll(all.map((p) => p.finish()));
    const pageMap = saved.pageMap ?? plan.localPageMap!(begun, frags[0]);
    const refs: FragmentRef[] = frags.map((s, k) => ({
      path: s.path,
      host: all[k].host,
      generation,
      footerCrc: s.footerCrc,
      pages: s.pages,
      bytes: s.fileBytes,
      ...(s.copies?.length ? { copies: s.copies } : {}),
    }));
    const stats = statsOf(frags, pageMap, base, saved);
    stats.totalMs = performance.now() - t0;
    const plain: Manifest = {
      dcresVersion: DCRES_VERSION,
      id,
      vm: plan.vm,
      generation,
      parent: parent ? parent.manifest.generation : null,
      createdAt: new Date().toISOString(),
      mode: opts.mode,
      compressed: opts.compress,
      machine: saved.machine,
      fragments: [...(parent?.manifest.fragments ?? []), ...refs],
      pageMap,
      prefetchOrder: prefetchOrder(tracker.lastDirty),
      stats,
    };
    const manifest = plan.extend ? plan.extend(plain) : plain;
    const bytes = encodeManifest(manifest);
    const [local, ...others] = all;
    await settleAll(others.map((p) => p.commit(bytes, manifest)));
    await local.commit(bytes, manifest);
    tracker.commit(txn);
    tracker.baselineId = id;
    const report = { dir: opts.dir, generation, id, mode: opts.mode, parent: plain.parent, stats };
    return { report, manifest };
  } catch (e) {
    if (txn) tracker.abort(txn);
    await Promise.all(all.map((p) => p.abort()));
    removeGeneration(dir);
    const err = saveError(e, opts.dir, generation);
    if (err instanceof CheckpointError || all.length <= 1) throw err;
    throw new CheckpointError(
      `checkpoint of ${plan.vm} failed and was removed from every host (the previous one is intact): ${
        (e as Error).message
      }`,
    );
  } finally {
    release();
  }
}

/** Waits for every promise; throws the first failure once all have settled. */
async function settleAll<T>(ps: Promise<T>[]): Promise<T[]> {
  const rs = await Promise.allSettled(ps);
  for (const r of rs) if (r.status === "rejected") throw r.reason;
  return rs.map((r) => (r as PromiseFulfilledResult<T>).value);
}

/** Where a participant's fragment is copied as it is written: the sink, and the hosts it reaches. */
export interface FragmentReplicas {
  /** Receives the file's bytes (every replica at once). */
  sink: FragmentSink;
  /** Host names of the copies, for the manifest. */
  hosts: string[];
}

/**
 * This host's participant in checkpoint `b`: its fragment `HOST.frag`, which the strategy writes
 * through the writer returned (and copies to `replicas` meanwhile), and its copy of the manifest.
 */
export function localParticipant(
  host: string,
  opts: Pick<CheckpointOptions, "dir" | "compress">,
  b: CheckpointBegun,
  replicas?: FragmentReplicas,
): { participant: CheckpointParticipant; writer: FragmentWriter } {
  const path = join(b.dir, `${host}.frag`);
  const writer = FragmentWriter.create(path, {
    checkpointId: b.idBytes,
    generation: b.generation,
    compress: opts.compress,
    sink: replicas?.sink,
  });
  const participant: CheckpointParticipant = {
    host,
    begin: () => Promise.resolve(),
    finish: async () => ({
      ...(await writer.finish()),
      path: relative(opts.dir, path),
      copies: replicas?.hosts,
    }),
    commit: (_bytes, manifest) => Promise.resolve(commitManifest(b.dir, manifest)),
    abort: () => writer.abort(),
  };
  return { participant, writer };
}
