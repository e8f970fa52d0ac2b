/**
 * The parallel checkpoint of a split VM, run by its main host: every host saves the pages it holds
 * into its own fragment at once (sub-hosts from their page stores, main from guest memory), so no
 * page crosses the network to be saved; main adds the machine state; the manifest names, for every
 * page, the fragment holding its copy, and is committed on every participant once every fragment is
 * durable. Paging goes on meanwhile in precopy and cow; docs/CONSISTENCY.md gives the rules that
 * keep the checkpoint the memory of one instant, and SaveLedger keeps them.
 */
import { join, relative } from "node:path";
import { getLogger } from "@logtape/logtape";
import { PAGE } from "../ckpt/format.ts";
import type { FragmentSummary } from "../ckpt/fragment_writer.ts";
import {
  commitManifest,
  encodeManifest,
  type FragmentRef,
  type Manifest,
} from "../ckpt/manifest.ts";
import { expandPageMap } from "../ckpt/page_map.ts";
import {
  checkParent,
  CheckpointError,
  type CheckpointOptions,
  type CheckpointReport,
  DCRES_VERSION,
  emptyStats,
  newCheckpointId,
  prefetchOrder,
  removeGeneration,
  saveError,
} from "../ckpt/save.ts";
import { CheckpointStore } from "../ckpt/store.ts";
import type { DirtyTracker } from "../memory/dirty_tracker.ts";
import type { Machine } from "../vmm/machine.ts";
import { MAIN } from "./ownership.ts";
import type { RemotePager } from "./remote_pager.ts";
import { SplitCheckpoint } from "./split_session.ts";
import { piecesOf } from "../net/chunks.ts";
import type { SubLink } from "./sub_link.ts";

const log = getLogger(["dcres", "checkpoint"]);
const MAX_ROUNDS = 10;
/** Pause cost besides page writes, in the precopy estimate. */
const PAUSE_OVERHEAD_MS = 10;

/** A split VM's checkpoint report: the single-host one plus where pages were saved. */
export interface SplitCheckpointReport extends CheckpointReport {
  /** Pages each host saved (stored or zero), by host name. */
  pagesSaved: Record<string, number>;
  /** Pages that crossed the network in order to be saved. */
  pagesSentToSave: number;
  /** Pages paged in or out while the checkpoint ran. */
  pagesMovedMeanwhile: number;
}

/** A fragment's summary as a sub-host reports it. */
type SubSummary = Omit<FragmentSummary, "gfns">;

/** Options of a split VM's checkpoint. */
export interface SplitCheckpointOptions extends CheckpointOptions {
  /** This (main) host's name, naming its fragment. */
  host: string;
}

/** Takes a parallel checkpoint of split VM `m`; on failure no participant keeps any of it. */
export async function takeSplitCheckpoint(
  m: Machine,
  tracker: DirtyTracker,
  pager: RemotePager,
  opts: SplitCheckpointOptions,
): Promise<SplitCheckpointReport> {
  const t0 = performance.now();
  const mem = m.vm.memory;
  const store = new CheckpointStore(opts.dir);
  const parent = checkParent(store, tracker, opts, m.spec.memSize);
  // Every participant must be reachable before anything is written.
  await pager.ensureLinks();
  const { generation, dir } = store.begin();
  const { id, idBytes } = newCheckpointId();
  const subs = pager.subLinks();
  const base = parent ? parent.manifest.fragments.length : 0;
  const fragmentOf = new Array(pager.ownership.hosts).fill(-1);
  fragmentOf[MAIN] = base;
  subs.forEach((l, k) => fragmentOf[l.index] = base + 1 + k);
  const inherited = parent
    ? Int32Array.from(expandPageMap(parent.manifest.pageMap, mem.pages))
    : undefined;
  const begun: SubLink[] = [];
  let ck: SplitCheckpoint | undefined;
  let txn: ReturnType<DirtyTracker["begin"]> | undefined;
  let paused = false;
  const moves0 = pager.stats().pageIns + pager.stats().pageOuts;
  const stats = emptyStats();
  try {
    await Promise.all(subs.map(async (l) => {
      await l.call("pages.save.begin", { id, generation, compress: opts.compress });
      begun.push(l);
    }));
    ck = new SplitCheckpoint(
      m,
      pager,
      opts.host,
      join(dir, `${opts.host}.frag`),
      fragmentOf,
      inherited,
      idBytes,
      generation,
      opts.compress,
    );
    const c = ck;
    txn = tracker.begin();
    c.written(txn.bits);
    tracker.onSample = (bits) => c.written(bits);
    pager.saver = c;
    if (opts.mode === "precopy") {
      let rate = 200e6;
      for (;; stats.rounds++) {
        const before = c.book.missing();
        const tr = performance.now();
        await c.round(tracker.lastDirty);
        const secs = (performance.now() - tr) / 1000;
        if (secs > 0 && before) rate = Math.max(rate / 4, (before * PAGE) / secs);
        tracker.sample();
        const left = c.book.missing();
        opts.onProgress?.(mem.pages - left, mem.pages);
        const fits = PAUSE_OVERHEAD_MS + (left * PAGE) / rate * 1000 <= opts.maxDowntimeMs;
        if (fits || stats.rounds >= MAX_ROUNDS || left >= before) break;
      }
    }
    const tp = performance.now();
    await m.vm.pause();
    paused = true;
    await pager.drain();
    tracker.sample();
    tracker.onSample = undefined;
    tracker.seal();
    const state = m.save();
    opts.onConsistencyPoint?.();
    const holderAtPoint = Uint8Array.from(
      { length: mem.pages },
      (_, g) => pager.ownership.holderOf(g),
    );
    // From here on, a sub-host counts the pages it saves that reached it after the point: they
    // would have crossed the network to be saved. No page-out starts until every one is told.
    await pager.withMemory(async () => {
      if (opts.mode === "cow") await c.freeze();
      else await Promise.all(subs.map((l) => l.call("pages.save.point", {})));
    });
    if (opts.mode === "cow") {
      m.vm.resume();
      paused = false;
      stats.downtimeMs = performance.now() - tp;
    }
    // Stop and precopy save the rest paused; cow with the guest running, in rounds until every
    // page has its copy (a page that moved meanwhile was saved before it left).
    for (let k = 0; c.book.missing() > 0; k++) {
      if (k >= MAX_ROUNDS) throw new Error(`${c.book.missing()} pages could not be saved`);
      await c.round(tracker.lastDirty);
    }
    c.unfreeze();
    const pageMap = c.book.pageMap((g) => holderAtPoint[g]);
    pager.saver = undefined;
    if (paused) {
      m.vm.resume();
      paused = false;
      stats.downtimeMs = performance.now() - tp;
    }
    const [mine, ...theirs] = await Promise.all([
      c.finishMain(),
      ...subs.map((l) => l.call<SubSummary>("pages.save.finish", {})),
    ]);
    const ref = (host: string, s: SubSummary): FragmentRef => ({
      path: s.path.startsWith("/") ? relative(opts.dir, s.path) : s.path,
      host,
      generation,
      footerCrc: s.footerCrc,
      pages: s.pages,
      bytes: s.fileBytes,
    });
    const frags = [ref(opts.host, mine), ...subs.map((l, k) => ref(l.host, theirs[k]))];
    const fragments = [...(parent?.manifest.fragments ?? []), ...frags];
    const all = [mine, ...theirs];
    stats.pagesSaved = all.reduce((a, s) => a + s.pages - s.zeroPages, 0);
    stats.zeroPages = all.reduce((a, s) => a + s.zeroPages, 0);
    stats.pagesSavedTwice = all.reduce((a, s) => a + s.rewrites, 0);
    stats.bytesWritten = all.reduce((a, s) => a + s.dataBytes, 0);
    stats.pagesReused = c.book.copy.reduce((n, f) => n + (f < base ? 1 : 0), 0);
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
      machine: state,
      fragments,
      pageMap,
      prefetchOrder: prefetchOrder(tracker.lastDirty),
      stats,
      split: {
        mainMemBytes: pager.stats().mainBudgetPages * PAGE,
        hosts: { [opts.host]: "main", ...Object.fromEntries(subs.map((l) => [l.host, l.addr])) },
      },
    };
    // Committed on the sub-hosts first: main's copy is the one the next incremental builds on.
    const bytes = encodeManifest(manifest);
    await Promise.all(
      subs.map((l) => l.call("pages.save.commit", {}, { upload: piecesOf(bytes) })),
    );
    commitManifest(dir, manifest);
    tracker.commit(txn);
    tracker.baselineId = id;
    log.info("checkpoint {id} of {vm}: {pages} pages saved on {hosts} hosts", {
      id,
      vm: m.spec.name,
      pages: stats.pagesSaved,
      hosts: frags.length,
    });
    return {
      dir: opts.dir,
      generation,
      id,
      mode: opts.mode,
      parent: manifest.parent,
      stats,
      pagesSaved: c.counts(),
      pagesSentToSave: c.sentToSave,
      pagesMovedMeanwhile: pager.stats().pageIns + pager.stats().pageOuts - moves0,
    };
  } catch (e) {
    log.error("checkpoint of {vm} failed: {error}", {
      vm: m.spec.name,
      error: (e as Error).message,
    });
    ck?.unfreeze();
    tracker.onSample = undefined;
    pager.saver = undefined;
    if (paused && !m.vm.isStopped) m.vm.resume();
    await ck?.abortMain();
    if (txn) tracker.abort(txn);
    await Promise.all(begun.map((l) => l.call("pages.save.abort", {}).catch(() => {})));
    removeGeneration(dir);
    const err = saveError(e, opts.dir, generation);
    if (err instanceof CheckpointError) throw err;
    throw new CheckpointError(
      `checkpoint of ${m.spec.name} failed and was removed from every host (the previous one is intact): ${
        (e as Error).message
      }`,
    );
  }
}
