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
import * as libc from "../ffi/libc.ts";
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
  coldestFirst,
  DCRES_VERSION,
  emptyStats,
  newCheckpointId,
  prefetchOrder,
  removeGeneration,
  saveError,
} from "../ckpt/save.ts";
import { CheckpointStore } from "../ckpt/store.ts";
import { DirtyTracker } from "../memory/dirty_tracker.ts";
import { indexRuns } from "../memory/runs.ts";
import type { Machine } from "../vmm/machine.ts";
import { MAIN } from "./ownership.ts";
import { presentPages, type RemotePager } from "./remote_pager.ts";
import { SaveLedger } from "./save_ledger.ts";
import type { SubLink } from "./sub_link.ts";

const log = getLogger(["dcres", "checkpoint"]);
const BATCH = 4096;
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

/** Runs of gfns as [start, count] pairs, the form save requests carry. */
function runsOf(gfns: number[]): Array<[number, number]> {
  const sorted = gfns.slice().sort((a, b) => a - b);
  return indexRuns(sorted).map(([i, n]) => [sorted[i], n]);
}

/** `bytes` in pieces that fit RPC frames. */
async function* chunks(bytes: Uint8Array): AsyncIterable<Uint8Array> {
  for (let o = 0; o < bytes.length; o += 256 * 1024) yield bytes.subarray(o, o + 256 * 1024);
}

function fromRuns(runs: Array<[number, number]>): number[] {
  const out: number[] = [];
  for (const [s, n] of runs) for (let g = s; g < s + n; g++) out.push(g);
  return out;
}

/** One parallel checkpoint of a split VM. */
class SplitCheckpoint {
  private readonly subs: SubLink[];
  private readonly ledger: SaveLedger;
  private readonly writer: FragmentWriter;
  private readonly zeroPage = new Uint8Array(PAGE);
  private savedBy = new Map<string, Set<number>>();
  private copies: Array<{ gfn: number; page: Uint8Array }> = [];
  /**
   * Pages whose bytes crossed the network to be saved: a sub-host saves only pages its store holds
   * and main only pages in its memory or on their way out of it, so any other page a host reports
   * saved would have had to be sent; counted from the sub-hosts' own reports.
   */
  sentToSave = 0;

  constructor(
    private readonly m: Machine,
    private readonly pager: RemotePager,
    private readonly self: string,
    private readonly fragPath: string,
    fragmentOf: number[],
    inherited: Int32Array | undefined,
    idBytes: Uint8Array,
    generation: number,
    compress: boolean,
  ) {
    this.subs = pager.subLinks();
    this.ledger = new SaveLedger(m.vm.memory.pages, fragmentOf, inherited);
    this.writer = FragmentWriter.create(fragPath, { checkpointId: idBytes, generation, compress });
    this.savedBy.set(self, new Set());
    for (const l of this.subs) this.savedBy.set(l.host, new Set());
  }

  get book(): SaveLedger {
    return this.ledger;
  }

  /** Voids the copies of pages the guest wrote, as the dirty log reports them. */
  written(bits: Uint8Array): void {
    const own = this.pager.ownership;
    this.ledger.written(DirtyTracker.gfns(bits, this.ledger.pages), (g) => own.holderOf(g));
  }

  /**
   * Saves `gfns` (main's, read from guest memory) while no page-out can take them: pages main holds
   * but never got are recorded as zero pages without being touched.
   */
  async saveMain(gfns: number[]): Promise<void> {
    const mem = this.pager.memory, own = this.pager.ownership;
    for (let i = 0; i < gfns.length; i += BATCH) {
      await this.pager.withMemory(async () => {
        // A page copied aside or saved on its way out since it was claimed has its copy already:
        // saving it again from memory would supersede that copy with later contents.
        const part = gfns.slice(i, i + BATCH).filter((g) =>
          own.holderOf(g) === MAIN && !own.isMoving(g) && !this.ledger.has(g)
        );
        if (!part.length) return;
        const ticket = this.ledger.ticket(part);
        const present = presentPages(mem);
        const data = part.filter((g) => present[g]), zeros = part.filter((g) => !present[g]);
        await this.writer.append(data, { bytes: mem.view(), base: mem.hostAddr });
        await this.writeZeros(zeros);
        await this.writer.flush();
        this.ledger.saved(MAIN, part, ticket);
        for (const g of part) this.savedBy.get(this.self)!.add(g);
        // Saved: the guest may write them freely again.
        if (this.ledger.isFrozen) this.pager.protect(runsOf(data), false);
      });
      await this.writeCopies();
    }
    await this.writeCopies();
  }

  private async writeZeros(gfns: number[]) {
    if (!gfns.length) return;
    const src = { bytes: this.zeroPage, base: libc.ptrValue(Deno.UnsafePointer.of(this.zeroPage)) };
    await this.writer.append(gfns, src, new Array(gfns.length).fill(0));
  }

  /** Rule 2: pages leaving main without a copy are saved by main first, from the bytes sent. */
  async leavingMain(gfns: number[], data: Uint8Array): Promise<void> {
    const idx: number[] = [];
    gfns.forEach((g, i) => {
      if (this.ledger.mustSaveBeforePageOut(g)) idx.push(i);
    });
    if (!idx.length) return;
    const part = idx.map((i) => gfns[i]);
    const ticket = this.ledger.ticket(part);
    const src = {
      bytes: data as Uint8Array<ArrayBuffer>,
      base: libc.ptrValue(Deno.UnsafePointer.of(data as Uint8Array<ArrayBuffer>)),
    };
    await this.writer.append(part, src, idx.map((i) => i * PAGE));
    await this.writer.flush();
    this.ledger.saved(MAIN, part, ticket);
    for (const g of part) this.savedBy.get(this.self)!.add(g);
  }

  /**
   * The consistency point of a copy-on-write checkpoint (vCPUs paused, paging drained): every page
   * without a copy is owed by its holder; sub-hosts are told theirs; main records its never-written
   * pages as zero at once and write-protects the rest, keeping a page's old contents aside before
   * the guest's first write to it.
   */
  async freeze(): Promise<void> {
    const own = this.pager.ownership, mem = this.pager.memory;
    this.ledger.freeze((g) => own.holderOf(g));
    await Promise.all(this.subs.map((l) => {
      const owed: number[] = [];
      for (let g = 0; g < this.ledger.pages; g++) if (this.ledger.owedBy(g, l.index)) owed.push(g);
      return l.call("pages.save.owe", { gfns: runsOf(owed) });
    }));
    const present = presentPages(mem);
    const mine: number[] = [], zeros: number[] = [];
    for (let g = 0; g < this.ledger.pages; g++) {
      if (this.ledger.owedBy(g, MAIN)) (present[g] ? mine : zeros).push(g);
    }
    await this.writeZeros(zeros);
    this.ledger.saved(MAIN, zeros, this.ledger.ticket(zeros));
    for (const g of zeros) this.savedBy.get(this.self)!.add(g);
    this.pager.onWriteProtected = (g) => this.copyAside(g);
    this.pager.protect(runsOf(mine), true);
  }

  /** The guest is about to write `g`: a page main still owes is copied aside first. */
  private copyAside(g: number) {
    if (!this.ledger.owedBy(g, MAIN)) return;
    const mem = this.pager.memory;
    this.copies.push({ gfn: g, page: mem.view(g * PAGE, PAGE).slice() });
    this.ledger.saved(MAIN, [g], this.ledger.ticket([g]));
    this.savedBy.get(this.self)!.add(g);
  }

  /** Writes the pages copied aside so far. */
  private async writeCopies() {
    if (!this.copies.length) return;
    const list = this.copies;
    this.copies = [];
    const buf = new Uint8Array(list.length * PAGE);
    list.forEach((c, k) => buf.set(c.page, k * PAGE));
    await this.writer.append(
      list.map((c) => c.gfn),
      { bytes: buf, base: libc.ptrValue(Deno.UnsafePointer.of(buf)) },
      list.map((_, k) => k * PAGE),
    );
    await this.writer.flush();
  }

  /** Ends copy-on-write: nothing of main stays protected. */
  unfreeze(): void {
    if (!this.pager.onWriteProtected) return;
    this.pager.onWriteProtected = undefined;
    this.pager.protect([[0, this.ledger.pages]], false);
  }

  /** Asks sub-host `l` to save the pages of it that have no copy; records what it saved. */
  async saveSub(l: SubLink): Promise<void> {
    const own = this.pager.ownership;
    const gfns = this.ledger.claim(l.index, (g) => own.holderOf(g) === l.index && !own.isMoving(g));
    // After a copy-on-write point a sub-host may have saved pages on their way out: ask anyway.
    if (!gfns.length && !this.ledger.isFrozen) return;
    const ticket = this.ledger.ticket(gfns);
    const r = await l.call<{ saved: Array<[number, number]>; received: number }>("pages.save", {
      gfns: runsOf(gfns),
    });
    this.sentToSave += r.received;
    const saved = this.ledger.reported(l.index, gfns, ticket, fromRuns(r.saved));
    for (const g of saved) this.savedBy.get(l.host)!.add(g);
  }

  /** One round: every host saves, at once, the pages it holds that have no copy. */
  async round(order: Uint32Array): Promise<void> {
    const own = this.pager.ownership;
    const mine = this.ledger.claim(MAIN, (g) => own.holderOf(g) === MAIN && !own.isMoving(g));
    await Promise.all([
      this.saveMain(coldestFirst(mine, order)),
      ...this.subs.map((l) => this.saveSub(l)),
    ]);
  }

  async finishMain(): Promise<FragmentSummary> {
    return await this.writer.finish();
  }

  async abortMain(): Promise<void> {
    await this.writer.abort();
  }

  /** Distinct pages each host saved. */
  counts(): Record<string, number> {
    return Object.fromEntries([...this.savedBy].map(([h, s]) => [h, s.size]));
  }

  get path(): string {
    return this.fragPath;
  }
}

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
    await Promise.all(subs.map((l) => l.call("pages.save.commit", {}, { upload: chunks(bytes) })));
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
