/**
 * Moving a VM's memory between its hosts while it runs: split migration (a one-host VM becomes a
 * split one, pre-copy style, without paging before the switchover), gathering every page back to
 * main, and moving all of one sub-host's pages to a host new to the VM.
 */
import { getLogger } from "@logtape/logtape";
import type { DirtyTracker } from "../memory/dirty_tracker.ts";
import type { GuestMemory } from "../memory/guest_memory.ts";
import { batches, byHost, hostJobs, inParallel, readPages } from "./batches.ts";
import { lowWater } from "./budget.ts";
import type { FaultServer } from "./fault_server.ts";
import { presentPages } from "./main_memory.ts";
import { MAIN } from "./ownership.ts";
import type { PagerContext } from "./pager_context.ts";
import { stripeHome } from "./sub_hosts.ts";
import { PageOp } from "./wire.ts";

/** A split migration switches over once this few pages are left to resend. */
const FINAL_PAGES = 2048;
/** Most copy rounds of a split migration. */
const MAX_ROUNDS = 5;

const log = getLogger(["dcres", "paging"]);

/** How a split migration went. */
export interface SplitReport {
  /** ms from start to the last page handed over. */
  ms: number;
  /** ms the vCPUs were paused for the switchover. */
  downtimeMs: number;
  /** Copy rounds while the guest ran. */
  rounds: number;
  /** Pages copied to sub-hosts (with resends). */
  pagesSent: number;
  /** Pages the sub-hosts hold after the switchover (copied ones and never-written zero pages). */
  handedOver: number;
  /** Pages main holds after the switchover (pinned, hottest, and those written during the copy). */
  keptOnMain: number;
  /** Faults served remotely before the switchover completed (always 0: no paging meanwhile). */
  remoteFaults: number;
}

/** Which pages of a running VM a split migration sends, and how its sub-hosts start. */
export interface SplitPlan {
  /** Present pages to copy out, ascending: all but the hottest that fit main's budget. */
  out: number[];
  /** Pages never written: their sub-hosts start with them as zero pages. */
  zero: number[];
  /** The host each page's store starts on (zero pages on their stripe's sub-host). */
  holder: (g: number) => number;
}

/** Plans the split of a running VM whose main keeps at most `budget` pages over `subs` sub-hosts. */
export function planSplit(
  mem: GuestMemory,
  tracker: DirtyTracker,
  pinned: number,
  subs: number,
  budget: number,
): SplitPlan {
  const present = presentPages(mem);
  tracker.sample();
  const hot: number[] = [], zero: number[] = [];
  for (let g = pinned; g < mem.pages; g++) (present[g] ? hot : zero).push(g);
  hot.sort((a, b) => tracker.lastDirty[b] - tracker.lastDirty[a]);
  const keepN = Math.max(0, lowWater(budget) - pinned);
  const out = hot.slice(keepN).sort((a, b) => a - b);
  const zeroSet = new Set(zero);
  return { out, zero, holder: (g) => zeroSet.has(g) ? stripeHome(g, pinned, subs) : MAIN };
}

/** The whole-VM moves of one split VM. */
export class SplitMigration {
  readonly #ctx: PagerContext;
  readonly #faults: FaultServer;

  /** Moves `ctx`'s pages; `faults` brings pages to main. */
  constructor(ctx: PagerContext, faults: FaultServer) {
    this.#ctx = ctx;
    this.#faults = faults;
  }

  /**
   * Copies `plan.out` to the sub-hosts in rounds that resend what the guest wrote meanwhile, then
   * switches over in one pause, in which `arm` starts paging.
   */
  async precopy(plan: SplitPlan, t0: number, arm: () => void): Promise<SplitReport> {
    const { tracker, memory, vm, links } = this.#ctx;
    const { out, zero } = plan;
    // Every read of the dirty log counts, whoever makes it: a read whose bits were dropped once let
    // a page written between two rounds leave with the contents of the round before (stale).
    const written = new Uint8Array(Math.ceil(memory.guest.pages / 64) * 8);
    const chained = tracker.onSample;
    tracker.onSample = (bits) => {
      for (let i = 0; i < bits.length; i++) written[i] |= bits[i];
      chained?.(bits);
    };
    const takeWritten = () => {
      tracker.sample();
      const bits = written.slice();
      written.fill(0);
      return bits;
    };
    let todo = out, rounds = 0, sent = 0;
    let rewritten: number[];
    let handed = 0;
    let pauseAt: number;
    try {
      takeWritten();
      for (;;) {
        rounds++;
        await this.#copyOut(todo);
        sent += todo.length;
        const dirty = takeWritten();
        const before = todo.length;
        todo = out.filter((g) => dirty[g >> 3] & (1 << (g & 7)));
        // Stop when few are left, or when the guest dirties them as fast as they are sent.
        if (todo.length <= FINAL_PAGES || rounds >= MAX_ROUNDS || todo.length > before / 2) break;
      }
      // Switchover: what the guest wrote since it was sent is hot, so it stays on main (the budget
      // loop pages out the coldest later); everything else now belongs to its sub-host.
      pauseAt = performance.now();
      await vm.pause();
      ({ rewritten, handed } = this.#switchOver(out, zero, todo, takeWritten(), arm));
    } finally {
      tracker.onSample = chained;
    }
    const downtimeMs = performance.now() - pauseAt;
    for (const [host, gfns] of byHost(rewritten, (g) => links.homeOf(g))) {
      links.link(host).releases.queue(gfns);
    }
    return {
      ms: performance.now() - t0,
      downtimeMs,
      rounds,
      pagesSent: sent,
      handedOver: handed,
      keptOnMain: this.#ctx.ownership.counts()[MAIN],
      remoteFaults: this.#faults.counts.faults,
    };
  }

  /**
   * The paused switchover of a split migration: `arm` registers userfaultfd and starts paging,
   * before anything else; sent pages the guest wrote since (`dirty`) and written zero pages stay on
   * main; the rest now belong to their sub-hosts and are dropped from main. Resumes the VM.
   */
  #switchOver(
    out: number[],
    zero: number[],
    todo: number[],
    dirty: Uint8Array,
    arm: () => void,
  ): { rewritten: number[]; handed: number } {
    const { ownership, memory, links } = this.#ctx;
    let rewritten: number[];
    let handed = 0;
    try {
      // Armed before main's memory is read or any page dropped. The vCPU pause stops guest code,
      // not every thread that touches guest memory: KVM's async page-fault worker, which faults a
      // page in for a vCPU halted on it, runs on after the vCPU has left KVM_RUN. With the arm
      // after the hole punch, such a touch of a departing page in between made it a fresh zero page
      // in the memfd: present, so it never faulted again, and the guest read zeros (or its write on
      // them) where the sub-host held the page; `guest verify` reported a bad page. Armed first,
      // the touch faults and waits for the fault loop, which fetches the page from its sub-host (or
      // zero-fills a page handed over as a zero page). The loops start here but run only once this
      // synchronous switchover is over.
      arm();
      const present = presentPages(memory.guest);
      const stay = new Set(todo);
      for (const g of out) if (dirty[g >> 3] & (1 << (g & 7))) stay.add(g);
      // Sent pages written again, and zero pages written at all, stay on main: their sub-hosts
      // must let go of the copies they were given.
      rewritten = [...out.filter((g) => stay.has(g)), ...zero.filter((g) => present[g])];
      const sentAndClean = out.filter((g) => !stay.has(g));
      const leaving = [...sentAndClean, ...zero.filter((g) => !present[g])];
      for (const g of leaving) {
        ownership.beginOut(g, links.homeOf(g));
        ownership.endOut(g);
      }
      for (const g of zero) if (!present[g]) this.#ctx.zero[g] = 1;
      handed = leaving.length;
      memory.punch(sentAndClean);
    } finally {
      this.#ctx.vm.resume();
    }
    return { rewritten, handed };
  }

  /** Sends `gfns` (still main's) to their home sub-hosts without changing their holder. */
  async #copyOut(gfns: number[]) {
    const { memory, links } = this.#ctx;
    // Each batch is read just before it is sent: reading a whole round first held the event loop
    // (and a copy of the round) long enough under load for the page links to time out. A write
    // after the read is in the dirty log, so the next round sends the page again.
    await inParallel(hostJobs(gfns, (g) => links.homeOf(g)), async (b) => {
      const link = links.link(b.host);
      link.releases.cancel(b.gfns);
      const data = readPages(memory.guest, b.gfns);
      await link.request(PageOp.PUT, Uint32Array.from(b.gfns), { data });
    });
  }

  /** Brings every page to main while the guest runs (faults are still served). */
  async pullAll(): Promise<void> {
    const { ownership, memory, links } = this.#ctx;
    for (let pass = 0; ownership.counts()[MAIN] < memory.guest.pages; pass++) {
      if (this.#faults.blocked) throw new Error(`cannot gather: ${this.#faults.blocked}`);
      if (pass > 1000) throw new Error("cannot gather: pages keep moving");
      const jobs = links.all.flatMap((l) =>
        batches(this.#idleHeldBy(l.index)).map((gfns) => [l.index, gfns] as const)
      );
      await inParallel(jobs, ([host, gfns]) => this.#faults.fetch(host, gfns, [], false));
      await links.settled();
    }
  }

  /**
   * Moves every page sub-host `from` holds to `to` (a host new to this VM) while the guest runs,
   * for maintenance of `from`: main copies them across in batches; a fault on a page in flight
   * waits for it and is then served by `to`. `from` takes no new pages meanwhile and its store is
   * deleted at the end.
   */
  async moveSub(from: string, to: string): Promise<{ ms: number; pages: number }> {
    const { ownership, links } = this.#ctx;
    const t0 = performance.now();
    const old = links.active().find((l) => l.addr === from || l.host === from);
    if (!old) {
      throw new Error(
        `${from} is not one of its sub-hosts (${links.active().map((l) => l.addr).join(", ")})`,
      );
    }
    if (links.active().some((l) => l.addr === to)) {
      throw new Error(`${to} already holds part of it; name a host new to this VM`);
    }
    if (old.down) {
      throw new Error(`${from} is unreachable (${old.down}); its pages cannot be moved`);
    }
    const link = await links.connectNew(to);
    const idx = ownership.addHost();
    links.replace(old, link);
    let moved = 0;
    for (let pass = 0; ownership.counts()[old.index] > 0; pass++) {
      if (pass > 100) throw new Error(`pages of ${from} keep moving; try again`);
      await inParallel(batches(this.#idleHeldBy(old.index)), async (gfns) => {
        const n = await this.#across(old.index, idx, gfns);
        moved += n;
      });
      await links.settled();
    }
    await old.drop();
    old.close();
    old.retired = true;
    log.info("{from} replaced by {to}: {pages} pages moved", { from, to, pages: moved });
    return { ms: performance.now() - t0, pages: moved };
  }

  /** Moves `gfns` from sub-host `from` to sub-host `to` through main; returns how many moved. */
  async #across(from: number, to: number, gfns: number[]): Promise<number> {
    const { ownership: own, links } = this.#ctx;
    // Begun under the memory lock: a checkpoint's consistency point holds it until every sub-host
    // knows what it owes, so no page leaves a sub-host unsaved in between.
    gfns = await this.#ctx.withMemory(() => {
      const idle = gfns.filter((g) => own.holderOf(g) === from && !own.isMoving(g));
      for (const g of idle) own.beginAcross(g, to);
      return idle;
    });
    if (!gfns.length) return 0;
    try {
      const list = Uint32Array.from(gfns);
      const data = await links.link(from).request(PageOp.GET, list);
      const dest = links.link(to);
      await dest.releases.replacing(gfns, () => dest.request(PageOp.PUT, list, { data }));
      for (const g of gfns) {
        own.endAcross(g);
        this.#ctx.zero[g] = 0;
      }
      return gfns.length;
    } catch (e) {
      for (const g of gfns) own.abort(g);
      throw e;
    } finally {
      this.#faults.settle(gfns);
    }
  }

  /** Pages `host` holds that are not moving. */
  #idleHeldBy(host: number): number[] {
    const { ownership, memory, pinned } = this.#ctx;
    const out: number[] = [];
    for (let g = pinned; g < memory.guest.pages; g++) {
      if (ownership.holderOf(g) === host && !ownership.isMoving(g)) out.push(g);
    }
    return out;
  }
}
