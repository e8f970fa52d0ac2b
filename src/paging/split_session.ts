/**
 * One parallel checkpoint of a split VM as its main host runs it: main's fragment writer, the
 * ledger of copies, main's saves from guest memory (and from pages on their way out), the
 * sub-hosts' save requests, and copy-on-write on main. `takeSplitCheckpoint` drives it.
 */
import * as libc from "../ffi/libc.ts";
import { PAGE } from "../ckpt/format.ts";
import { type FragmentSummary, FragmentWriter } from "../ckpt/fragment_writer.ts";
import { coldestFirst } from "../ckpt/save.ts";
import { DirtyTracker } from "../memory/dirty_tracker.ts";
import { indexRuns } from "../memory/runs.ts";
import type { Machine } from "../vmm/machine.ts";
import { MAIN } from "./ownership.ts";
import { presentPages, type RemotePager } from "./remote_pager.ts";
import { SaveLedger } from "./save_ledger.ts";
import type { SubLink } from "./sub_link.ts";

const BATCH = 4096;

/** Runs of gfns as [start, count] pairs, the form save requests carry. */
function runsOf(gfns: number[]): Array<[number, number]> {
  const sorted = gfns.slice().sort((a, b) => a - b);
  return indexRuns(sorted).map(([i, n]) => [sorted[i], n]);
}

function fromRuns(runs: Array<[number, number]>): number[] {
  const out: number[] = [];
  for (const [s, n] of runs) for (let g = s; g < s + n; g++) out.push(g);
  return out;
}

/** One parallel checkpoint of a split VM. */
export class SplitCheckpoint {
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
