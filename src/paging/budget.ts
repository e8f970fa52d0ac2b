/**
 * Main's memory budget on a split VM: over it, main pages out its coldest pages (update history
 * from the dirty log and recent faults) down to a low-water mark. A page-out pauses the vCPUs for
 * the copy and the hole punch only, lets a checkpoint under way save the pages first, then hands
 * them to their sub-host; pages that cannot leave are put back into main's memory.
 */
import { getLogger } from "@logtape/logtape";
import { hostBatches } from "./batches.ts";
import type { FaultServer } from "./fault_server.ts";
import { MAIN } from "./ownership.ts";
import type { PagerContext } from "./pager_context.ts";
import { SubHostDownError } from "./sub_link.ts";
import { MAX_BATCH, PageOp } from "./wire.ts";
import { PAGE_SIZE } from "../accel/accel.ts";
import { sleep } from "../rpc/deadline.ts";

/** Paging out starts above the budget and stops this far below it. */
const LOW_WATER = 0.97;
/** How often the budget loop reads the dirty log, ms. */
const DIRTY_SAMPLE_MS = 100;
/** Most pages one page-out moves. */
const MAX_PAGE_OUT = 16 * MAX_BATCH;

const log = getLogger(["dcres", "paging"]);

/** What a checkpoint under way needs to hear of the pager. */
export interface PageOutSaver {
  /** `gfns` (contents in `data`) are about to leave main: save those that need it first. */
  leavingMain(gfns: number[], data: Uint8Array): Promise<void>;
}

/** The pages main keeps at most, from `--main-mem`; throws when that cannot work. */
export function budgetPages(mainMemBytes: number, subs: number, pinned: number): number {
  const budget = Math.floor(mainMemBytes / PAGE_SIZE);
  if (subs < 1) throw new Error("a split VM needs at least one sub-host (--sub)");
  if (budget < pinned + MAX_BATCH) {
    throw new Error(
      `--main-mem ${mainMemBytes} bytes is too small: main needs at least ${
        (pinned + MAX_BATCH) * 4
      } KiB for the VMM's own pages and one paging batch`,
    );
  }
  return budget;
}

/** The pages main keeps after paging out down from `budget`. */
export function lowWater(budget: number): number {
  return Math.floor(budget * LOW_WATER);
}

/** Keeps main within its budget. */
export class PageBudget {
  /** Pages sent from main to sub-hosts, and the vCPU pause of page-out batches (ms). */
  readonly counts = { pageOuts: 0, pageOutPauseMs: 0 };
  readonly #ctx: PagerContext;
  readonly #faults: FaultServer;
  readonly #saver: () => PageOutSaver | undefined;
  #pages: number;
  /** The budget while `holdAll` lifts it. */
  #held?: number;

  /**
   * Keeps at most `pages` on main; `faults` tells how hot a page is, and `saver` the checkpoint
   * under way, if any.
   */
  constructor(
    ctx: PagerContext,
    faults: FaultServer,
    pages: number,
    saver: () => PageOutSaver | undefined,
  ) {
    this.#ctx = ctx;
    this.#faults = faults;
    this.#pages = pages;
    this.#saver = saver;
  }

  /** Most pages main keeps. */
  get pages(): number {
    return this.#pages;
  }

  /** Lifts the budget to all of guest memory until `release` (nothing pages out meanwhile). */
  holdAll(): void {
    this.#held ??= this.#pages;
    this.#pages = this.#ctx.memory.guest.pages;
  }

  /** Ends `holdAll`: the budget applies again and the coldest pages leave. */
  release(): void {
    if (this.#held !== undefined) this.#pages = this.#held;
    this.#held = undefined;
  }

  /** Samples the dirty log and pages out over budget until paging stops. */
  async loop(): Promise<void> {
    const ctx = this.#ctx;
    let lastSample = 0;
    while (!ctx.stopped()) {
      await sleep(2);
      if (ctx.stopped()) break;
      const now = performance.now();
      if (now - lastSample > DIRTY_SAMPLE_MS) {
        ctx.tracker.sample();
        lastSample = now;
      }
      const resident = ctx.ownership.counts()[MAIN];
      if (resident <= this.#pages || this.#faults.blocked) continue;
      try {
        await this.#pageOut(resident - lowWater(this.#pages));
      } catch (e) {
        if (!ctx.stopped()) log.error("page-out failed: {error}", { error: (e as Error).message });
      }
    }
  }

  /** Main's coldest `n` pages that may leave (not pinned, not moving). */
  #coldest(n: number): number[] {
    const { ownership: own, tracker, local, pinned } = this.#ctx;
    const pages = this.#ctx.memory.guest.pages;
    const dirty = tracker.lastDirty, touch = this.#faults.lastTouch;
    const epochs = tracker.currentEpoch + 2;
    const count = new Uint32Array(epochs + 1);
    const key = (g: number) => Math.min(epochs, Math.max(dirty[g], touch[g]));
    // A lazily restored page not installed yet cannot leave (its bytes are not in memory yet).
    const movable = (g: number) =>
      own.holderOf(g) === MAIN && !own.isMoving(g) && !local?.isPending(g);
    for (let g = pinned; g < pages; g++) if (movable(g)) count[key(g)]++;
    let cutoff = 0, taken = 0;
    while (cutoff <= epochs && taken + count[cutoff] < n) taken += count[cutoff++];
    const out: number[] = [];
    let atCutoff = n - taken;
    for (let g = pinned; g < pages && out.length < n; g++) {
      if (!movable(g)) continue;
      const k = key(g);
      if (k < cutoff) out.push(g);
      else if (k === cutoff && atCutoff > 0) {
        out.push(g);
        atCutoff--;
      }
    }
    return out;
  }

  /** Pages out up to `n` of main's coldest pages. */
  async #pageOut(n: number) {
    const { ownership: own, memory, links, vm } = this.#ctx;
    const victims = this.#coldest(Math.min(n, MAX_PAGE_OUT));
    if (!victims.length) return;
    const dest = new Map<number, number>();
    for (const g of victims) {
      const d = links.destination(g);
      if (!d) return;
      dest.set(g, d);
    }
    const out = await this.#ctx.withMemory(async () => {
      // The guest must not write a page between its copy and its hole punch.
      const parked = await vm.pause();
      this.counts.pageOutPauseMs += parked;
      if (this.#ctx.stopped()) {
        vm.resume();
        return [];
      }
      const t0 = performance.now();
      try {
        const out = hostBatches(
          memory.guest,
          victims.filter((g) => own.holderOf(g) === MAIN && !own.isMoving(g)),
          (g) => dest.get(g)!,
        );
        for (const b of out) for (const g of b.gfns) own.beginOut(g, b.host);
        memory.punch(out.flatMap((b) => b.gfns));
        return out;
      } finally {
        this.counts.pageOutPauseMs += performance.now() - t0;
        vm.resume();
      }
    });
    await Promise.all(out.map(async (b) => {
      try {
        await this.#saver()?.leavingMain(b.gfns, b.data);
      } catch (e) {
        // Unsaved, the page must not leave: it goes back into main's memory.
        this.#putBack(b.gfns, b.data);
        this.#faults.settle(b.gfns);
        throw e;
      }
      await this.#put(b.host, b.gfns, b.data);
    }));
  }

  /** Hands `gfns` to `host`; if it cannot take them, they go back into main's memory. */
  async #put(host: number, gfns: number[], data: Uint8Array) {
    const { ownership: own, links } = this.#ctx;
    const link = links.link(host);
    try {
      await link.releases.replacing(
        gfns,
        () => link.request(PageOp.PUT, Uint32Array.from(gfns), { data }),
      );
      for (const g of gfns) {
        own.endOut(g);
        this.#ctx.zero[g] = 0;
      }
      this.counts.pageOuts += gfns.length;
    } catch (e) {
      this.#putBack(gfns, data);
      log.warn("page-out to {host} failed, pages kept on main: {error}", {
        host: link.host,
        error: (e as Error).message,
      });
      if (e instanceof SubHostDownError) void this.#faults.reconnect(host);
    } finally {
      this.#faults.settle(gfns);
    }
  }

  /** A page-out of `gfns` failed: their contents go back into main's memory, which keeps them. */
  #putBack(gfns: number[], data: Uint8Array) {
    this.#ctx.memory.copyIn(gfns, data);
    for (const g of gfns) this.#ctx.ownership.abort(g);
  }
}
