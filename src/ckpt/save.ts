/**
 * Takes a checkpoint of a running machine on this host, in one of three modes (docs/FORMAT.md,
 * "Modes"): stop (pause, save, resume), precopy (save while running, coldest pages first, re-save
 * dirtied pages in rounds, short final pause) and cow (consistency point at the start; pages are
 * write-protected and copied aside before the guest's first write to them).
 */
import { DirtyTracker, type DirtyTransaction } from "../memory/dirty_tracker.ts";
import type { Machine } from "../vmm/machine.ts";
import type { FragmentWriter, PageSource } from "./fragment_writer.ts";
import type { Manifest } from "./manifest.ts";
import { allGfns, coldestFirst } from "./order.ts";
import { buildPageMap, overlayPageMap } from "./page_map.ts";
import {
  type CheckpointBegun,
  type CheckpointOptions,
  type CheckpointReport,
  fitsPause,
  type FragmentReplicas,
  localParticipant,
  runCheckpoint,
  type SavedPages,
} from "./transaction.ts";
import { type CowSaver, CowSession } from "./cow.ts";
import { AccelCowSession } from "./cow_accel.ts";
import { PAGE_SIZE } from "../accel/accel.ts";
import { MAX_PRECOPY_ROUNDS } from "./fragment_layout.ts";

/** The host name of a one-host VM's fragment (`gNNNNNN/main.frag`), whichever host wrote it. */
export const ONE_HOST = "main";
const BATCH = 16384;
const MAX_ROUNDS = MAX_PRECOPY_ROUNDS;

/**
 * Copies of a one-host VM's fragment on other hosts, streamed while it is written, and copies of its
 * manifest there, committed before this host's.
 */
export interface HostCopies {
  /** The newest generation any holder has of this store (the new one must pass it). */
  ready(): Promise<number>;
  /** The sink and the holders' names for checkpoint `b`'s fragment. */
  replicas(b: CheckpointBegun): FragmentReplicas;
  /** Commits checkpoint `b`'s manifest on every holder. */
  commit(b: CheckpointBegun, bytes: Uint8Array): Promise<void>;
  /** The name of this host (its certificate's), recorded as the checkpoint's taker. */
  readonly host: string;
  /** The agent address of this host ("main") and of each holder, for the manifest's `addrs`. */
  readonly addrs: Record<string, string>;
  /** Drops checkpoint `b` on every holder; never rejects. */
  abort(b: CheckpointBegun): Promise<void>;
}

/**
 * Takes one checkpoint of `m` on this host (its fragment copied to other hosts by `copies`, when
 * given); on any failure removes the partial generation, here and on every holder.
 */
export async function takeCheckpoint(
  m: Machine,
  tracker: DirtyTracker,
  opts: CheckpointOptions,
  copies?: HostCopies,
): Promise<CheckpointReport> {
  let writer: FragmentWriter | undefined;
  const { report } = await runCheckpoint({
    opts,
    tracker,
    vm: m.spec.name,
    memSize: m.spec.memSize,
    ready: copies && (() => copies.ready()),
    participants: (b) => {
      const local = localParticipant(ONE_HOST, opts, b, copies?.replicas(b));
      writer = local.writer;
      if (!copies) return [local.participant];
      const p = local.participant;
      return [{
        ...p,
        commit: async (bytes, manifest) => {
          await copies.commit(b, bytes);
          await p.commit(bytes, manifest);
        },
        abort: async () => {
          await Promise.all([p.abort(), copies.abort(b)]);
        },
      }];
    },
    save: (b) => saveLocal(m, tracker, writer!, !!b.parent, opts),
    extend: copies && ((plain) => ({ ...plain, host: copies.host, addrs: copies.addrs })),
    localPageMap: (b, local) =>
      b.parent
        ? overlayPageMap(b.parent.manifest.pageMap, local.gfns!, b.base)
        : buildPageMap(m.vm.memory.pages, 0),
  });
  return report;
}

/**
 * The strategies of one host: stop (pause, save, resume), precopy (rounds while running, then a
 * short pause), cow (a pause for the point, then saves while the guest runs, old contents of
 * written pages copied aside first). Only the pages written since the parent, with `incremental`.
 */
async function saveLocal(
  m: Machine,
  tracker: DirtyTracker,
  writer: FragmentWriter,
  incremental: boolean,
  opts: CheckpointOptions,
): Promise<SavedPages> {
  const mem = m.vm.memory;
  const src: PageSource = { bytes: mem.view(), base: mem.hostAddr };
  const pages = mem.pages;
  let txn: DirtyTransaction | undefined;
  let paused = false;
  let cow: CowSaver | undefined;
  let rounds = 1, downtimeMs = 0;
  let state: Manifest["machine"];
  try {
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
      const pick = incremental ? txn.bits : undefined;
      const todo = () =>
        coldestFirst(pick ? DirtyTracker.gfns(pick, pages) : allGfns(pages), tracker.lastDirty);
      if (opts.mode === "stop") {
        await writeAll(writer, todo(), src, opts);
        m.vm.resume();
        paused = false;
        downtimeMs = performance.now() - tp;
      } else {
        cow!.arm(pick);
        m.vm.resume();
        paused = false;
        downtimeMs = performance.now() - tp;
        await cow!.save(writer, todo(), BATCH, opts.onProgress);
        cow!.close();
        cow = undefined;
      }
    } else {
      txn = tracker.begin();
      let todo = coldestFirst(
        incremental ? DirtyTracker.gfns(txn.bits.slice(), pages) : allGfns(pages),
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
        const fits = fitsPause(dirty.length, rate, opts.maxDowntimeMs);
        if (fits || rounds >= MAX_ROUNDS || dirty.length >= todo.length) {
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
          downtimeMs = performance.now() - tp;
          break;
        }
        todo = coldestFirst(dirty, tracker.lastDirty);
        rounds++;
      }
    }
    return { txn, machine: state, rounds, downtimeMs };
  } catch (e) {
    cow?.close();
    if (txn) tracker.abort(txn);
    if (paused && !m.vm.isStopped) m.vm.resume();
    throw e;
  }
}

async function writeAll(
  w: FragmentWriter,
  gfns: number[],
  src: PageSource,
  opts: CheckpointOptions,
): Promise<void> {
  const total = gfns.length * PAGE_SIZE;
  for (let i = 0; i < gfns.length; i += BATCH) {
    await w.append(gfns.slice(i, i + BATCH), src);
    opts.onProgress?.(Math.min(i + BATCH, gfns.length) * PAGE_SIZE, total);
  }
  await w.flush();
}
