/**
 * One parallel checkpoint of a split VM as its main host runs it: the ledger of copies, main's
 * saves from guest memory (and from pages on their way out), the sub-hosts' save requests, and
 * copy-on-write on main. It reaches memory, fragments and sub-hosts only through `SplitSaveIo`, so
 * the simulation drives this very code against in-memory hosts and can interleave at every await;
 * `saveSplitPages` (split_save.ts) drives it.
 */
import type { FragmentSummary } from "../ckpt/fragment_writer.ts";
import { DirtyTracker } from "../memory/dirty_tracker.ts";
import { gfnRuns } from "../memory/runs.ts";
import { coldestFirst } from "../ckpt/order.ts";
import { MAIN, type PageOwnership } from "./ownership.ts";
import { SaveLedger } from "./save_ledger.ts";
import { PAGE_SIZE } from "../accel/accel.ts";

/** Pages main reads from memory per batch unless the I/O says otherwise. */
const BATCH = 4096;

/** One sub-host as a split checkpoint reaches it. */
export interface SubSaveLink {
  /** Index in the ownership table. */
  readonly index: number;
  /** Name, as the manifest and the statistics give it. */
  readonly host: string;
  /** At a copy-on-write point: the sub-host owes `gfns`. */
  owe(gfns: number[]): Promise<void>;
  /** At a stop or precopy point: pages arriving from now on count as sent to be saved. */
  point(): Promise<void>;
  /**
   * Save `gfns`: returns those saved, with the pages saved on their way out since the last answer,
   * and how many of them had arrived after the consistency point (they crossed to be saved).
   */
  save(gfns: number[]): Promise<{ saved: number[]; received: number }>;
}

/** Main's fragment: each append is durable once it resolves. */
export interface MainFragmentIo {
  /** Appends `gfns` as guest memory holds them when the write reaches the file. */
  appendMemory(gfns: number[]): Promise<void>;
  /** Appends `gfns` as zero pages (never written: nothing to read). */
  appendZeros(gfns: number[]): Promise<void>;
  /**
   * Appends `gfns` from `data` (pages leaving main, copies aside): page i at byte `offsets[i]`, or
   * one page after another.
   */
  appendPages(gfns: number[], data: Uint8Array, offsets?: number[]): Promise<void>;
  /** Finishes the fragment (index, footer, fdatasync). */
  finish(): Promise<FragmentSummary>;
  /** Removes what was written. */
  abort(): Promise<void>;
}

/** What a split checkpoint reaches main's memory, its fragment and the sub-hosts through. */
export interface SplitSaveIo {
  /** Who holds each page, and which pages are moving. */
  readonly ownership: PageOwnership;
  /** Pages of guest memory. */
  readonly pages: number;
  /** Sub-hosts in the checkpoint. */
  readonly subs: readonly SubSaveLink[];
  /** Main's fragment. */
  readonly fragment: MainFragmentIo;
  /** Runs `fn` while no move (page-out, move across) can begin. */
  withMemory<T>(fn: () => Promise<T>): Promise<T>;
  /** 1 for each page main's memory has (a page never written reads as zero without a fault). */
  present(): Uint8Array;
  /** A copy of page `g` of main's memory as it is now. */
  readPage(g: number): Uint8Array;
  /** Sets or clears write protection of main's pages `runs`. */
  protect(runs: Array<[number, number]>, on: boolean): void;
  /** Calls `fn` before the guest's first write to a protected page (undefined: stop). */
  onWriteProtected(fn: ((g: number) => void) | undefined): void;
}

/** One parallel checkpoint of a split VM. */
export class SplitCheckpoint {
  readonly #io: SplitSaveIo;
  readonly #ledger: SaveLedger;
  readonly #batch: number;
  readonly #savedBy: Set<number>[];
  #copies: Array<{ gfn: number; page: Uint8Array }> = [];
  #protecting = false;
  /**
   * Pages whose bytes crossed the network to be saved: a sub-host saves only pages its store holds
   * and main only pages in its memory or on their way out of it, so any other page a host reports
   * saved would have had to be sent; counted from the sub-hosts' own reports.
   */
  sentToSave = 0;

  constructor(
    io: SplitSaveIo,
    /** Fragment index this checkpoint writes on each host (index = host). */
    fragmentOf: number[],
    /** Copies inherited from the parent generation, for incrementals. */
    inherited: Int32Array | undefined,
    /** Pages main saves per batch (small in the simulation). */
    batch = BATCH,
  ) {
    this.#io = io;
    this.#ledger = new SaveLedger(io.pages, fragmentOf, inherited);
    this.#batch = batch;
    this.#savedBy = Array.from({ length: io.ownership.hosts }, () => new Set<number>());
  }

  /** The ledger of copies. */
  get book(): SaveLedger {
    return this.#ledger;
  }

  /** Who holds each page. */
  get ownership(): PageOwnership {
    return this.#io.ownership;
  }

  /** Pages without a copy that are moving (no round can claim them until they land). */
  movingUnsaved(): number {
    const own = this.#io.ownership;
    let n = 0;
    for (let g = 0; g < this.#ledger.pages; g++) if (!this.#ledger.has(g) && own.isMoving(g)) n++;
    return n;
  }

  /** Voids the copies of pages the guest wrote, as the dirty log reports them. */
  written(bits: Uint8Array): void {
    const own = this.#io.ownership;
    this.#ledger.written(DirtyTracker.gfns(bits, this.#ledger.pages), (g) => own.holderOf(g));
  }

  #savedOn(host: number, gfns: Iterable<number>) {
    for (const g of gfns) this.#savedBy[host].add(g);
  }

  /**
   * Saves `gfns` (main's, read from guest memory) while no page-out can take them: pages main holds
   * but never got are recorded as zero pages without being touched.
   */
  async saveMain(gfns: number[]): Promise<void> {
    const io = this.#io, own = io.ownership;
    for (let i = 0; i < gfns.length; i += this.#batch) {
      await io.withMemory(async () => {
        // A page copied aside or saved on its way out since it was claimed has its copy already:
        // saving it again from memory would supersede that copy with later contents.
        const part = gfns.slice(i, i + this.#batch).filter((g) =>
          own.holderOf(g) === MAIN && !own.isMoving(g) && !this.#ledger.has(g)
        );
        if (!part.length) return;
        const ticket = this.#ledger.ticket(part);
        const present = io.present();
        const data = part.filter((g) => present[g]), zeros = part.filter((g) => !present[g]);
        await io.fragment.appendMemory(data);
        await io.fragment.appendZeros(zeros);
        this.#ledger.saved(MAIN, part, ticket);
        this.#savedOn(MAIN, part);
        // Saved: the guest may write them freely again.
        if (this.#ledger.isFrozen) io.protect(gfnRuns(data), false);
      });
      await this.#writeCopies();
    }
    await this.#writeCopies();
  }

  /** Rule 2: pages leaving main without a copy are saved by main first, from the bytes sent. */
  async leavingMain(gfns: number[], data: Uint8Array): Promise<void> {
    const idx: number[] = [];
    gfns.forEach((g, i) => {
      if (this.#ledger.mustSaveBeforePageOut(g)) idx.push(i);
    });
    if (!idx.length) return;
    const part = idx.map((i) => gfns[i]);
    const ticket = this.#ledger.ticket(part);
    await this.#io.fragment.appendPages(part, data, idx.map((i) => i * PAGE_SIZE));
    this.#ledger.saved(MAIN, part, ticket);
    this.#savedOn(MAIN, part);
  }

  /**
   * The consistency point of a copy-on-write checkpoint (vCPUs paused, paging drained): every page
   * without a copy is owed by its holder; sub-hosts are told theirs; main records its never-written
   * pages as zero at once and write-protects the rest, keeping a page's old contents aside before
   * the guest's first write to it.
   */
  async freeze(): Promise<void> {
    const io = this.#io, own = io.ownership, ledger = this.#ledger;
    ledger.freeze((g) => own.holderOf(g));
    await Promise.all(io.subs.map((l) => {
      const owed: number[] = [];
      for (let g = 0; g < ledger.pages; g++) if (ledger.owedBy(g, l.index)) owed.push(g);
      return l.owe(owed);
    }));
    const present = io.present();
    const mine: number[] = [], zeros: number[] = [];
    for (let g = 0; g < ledger.pages; g++) {
      if (ledger.owedBy(g, MAIN)) (present[g] ? mine : zeros).push(g);
    }
    await io.fragment.appendZeros(zeros);
    ledger.saved(MAIN, zeros, ledger.ticket(zeros));
    this.#savedOn(MAIN, zeros);
    io.onWriteProtected((g) => this.#copyAside(g));
    this.#protecting = true;
    io.protect(gfnRuns(mine), true);
  }

  /**
   * The consistency point, with the vCPUs paused: `reach` lets paging drain and takes the point;
   * then with `cow` the ledger freezes and each sub-host learns what it owes, otherwise the
   * sub-hosts are told. All of it runs with the memory lock held, under which every move begins,
   * so no page can leave a sub-host between the point and the moment that host knows it owes it
   * (it would leave unsaved).
   */
  point(cow: boolean, reach: () => Promise<void>): Promise<void> {
    return this.#io.withMemory(async () => {
      await reach();
      if (cow) await this.freeze();
      else await Promise.all(this.#io.subs.map((l) => l.point()));
    });
  }

  /** The guest is about to write `g`: a page main still owes is copied aside first. */
  #copyAside(g: number) {
    if (!this.#ledger.owedBy(g, MAIN)) return;
    this.#copies.push({ gfn: g, page: this.#io.readPage(g) });
    this.#ledger.saved(MAIN, [g], this.#ledger.ticket([g]));
    this.#savedOn(MAIN, [g]);
  }

  /** Writes the pages copied aside so far. */
  async #writeCopies() {
    if (!this.#copies.length) return;
    const list = this.#copies;
    this.#copies = [];
    const buf = new Uint8Array(list.length * PAGE_SIZE);
    list.forEach((c, k) => buf.set(c.page, k * PAGE_SIZE));
    await this.#io.fragment.appendPages(list.map((c) => c.gfn), buf);
  }

  /** Ends copy-on-write: nothing of main stays protected. */
  unfreeze(): void {
    if (!this.#protecting) return;
    this.#protecting = false;
    this.#io.onWriteProtected(undefined);
    this.#io.protect([[0, this.#ledger.pages]], false);
  }

  /** Asks sub-host `l` to save the pages of it that have no copy; records what it saved. */
  async saveSub(l: SubSaveLink): Promise<void> {
    const own = this.#io.ownership;
    const gfns = this.#ledger.claim(
      l.index,
      (g) => own.holderOf(g) === l.index && !own.isMoving(g),
    );
    // After a copy-on-write point a sub-host may have saved pages on their way out: ask anyway.
    if (!gfns.length && !this.#ledger.isFrozen) return;
    const ticket = this.#ledger.ticket(gfns);
    const r = await l.save(gfns);
    this.sentToSave += r.received;
    this.#savedOn(l.index, this.#ledger.reported(l.index, gfns, ticket, r.saved));
  }

  /** One round: every host saves, at once, the pages it holds that have no copy. */
  async round(order: Uint32Array): Promise<void> {
    const own = this.#io.ownership;
    const mine = this.#ledger.claim(MAIN, (g) => own.holderOf(g) === MAIN && !own.isMoving(g));
    // Every host's part settles before a failure is thrown: nothing of this checkpoint may still be
    // writing when its caller aborts it and the next one begins.
    const parts = await Promise.allSettled([
      this.saveMain(coldestFirst(mine, order)),
      ...this.#io.subs.map((l) => this.saveSub(l)),
    ]);
    for (const p of parts) if (p.status === "rejected") throw p.reason;
  }

  /** Distinct pages each host saved, by index in the ownership table. */
  counts(): number[] {
    return this.#savedBy.map((s) => s.size);
  }
}
