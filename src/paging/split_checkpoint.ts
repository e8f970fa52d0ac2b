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
import { type FragmentSummary, FragmentWriter } from "../ckpt/fragment_writer.ts";
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
import type { DirtyTracker, DirtyTransaction } from "../memory/dirty_tracker.ts";
import type { Machine } from "../vmm/machine.ts";
import { MAIN } from "./ownership.ts";
import type { RemotePager } from "./remote_pager.ts";
import { saveSplitPages } from "./split_save.ts";
import { pagerSaveIo } from "./split_save_io.ts";
import { SplitCheckpoint } from "./split_session.ts";
import { piecesOf } from "../net/chunks.ts";

const log = getLogger(["dcres", "checkpoint"]);

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
  let writer: FragmentWriter | undefined;
  let txn: DirtyTransaction | undefined;
  const moves0 = pager.stats().pageIns + pager.stats().pageOuts;
  const stats = emptyStats();
  let state: Manifest["machine"] | undefined;
  try {
    // Every begin settles before a failure is thrown, so the abort reaches each sub-host after it.
    const begins = await Promise.allSettled(
      subs.map((l) => l.call("pages.save.begin", { id, generation, compress: opts.compress })),
    );
    for (const b of begins) if (b.status === "rejected") throw b.reason;
    writer = FragmentWriter.create(join(dir, `${opts.host}.frag`), {
      checkpointId: idBytes,
      generation,
      compress: opts.compress,
    });
    const io = pagerSaveIo(pager, writer, subs, id);
    const c = new SplitCheckpoint(io, fragmentOf, inherited);
    pager.saver = c;
    const saved = await saveSplitPages(c, {
      mode: opts.mode,
      maxDowntimeMs: opts.maxDowntimeMs,
      tracker,
      pause: () => m.vm.pause(),
      resume: () => {
        if (!m.vm.isStopped) m.vm.resume();
      },
      drain: () => pager.drain(),
      atPoint: () => {
        state = m.save();
        opts.onConsistencyPoint?.();
      },
      wait: () => new Promise((r) => setTimeout(r, 5)),
      now: () => performance.now(),
      onProgress: opts.onProgress,
    }).finally(() => pager.saver = undefined);
    txn = saved.txn;
    stats.rounds = saved.rounds;
    stats.downtimeMs = saved.downtimeMs;
    const pageMap = saved.pageMap;
    const [mine, ...theirs] = await Promise.all([
      io.fragment.finish(),
      ...subs.map((l) => l.call<SubSummary>("pages.save.finish", { id })),
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
      machine: state!,
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
      subs.map((l) => l.call("pages.save.commit", { id }, { upload: piecesOf(bytes) })),
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
    const counts = c.counts();
    return {
      dir: opts.dir,
      generation,
      id,
      mode: opts.mode,
      parent: manifest.parent,
      stats,
      pagesSaved: {
        [opts.host]: counts[MAIN],
        ...Object.fromEntries(subs.map((l) => [l.host, counts[l.index]])),
      },
      pagesSentToSave: c.sentToSave,
      pagesMovedMeanwhile: pager.stats().pageIns + pager.stats().pageOuts - moves0,
    };
  } catch (e) {
    log.error("checkpoint of {vm} failed: {error}", {
      vm: m.spec.name,
      error: (e as Error).message,
    });
    await writer?.abort();
    if (txn) tracker.abort(txn);
    // Every sub-host is told, begun or not: a begin that arrives late is then refused there.
    await Promise.all(subs.map((l) => l.call("pages.save.abort", { id }).catch(() => {})));
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
