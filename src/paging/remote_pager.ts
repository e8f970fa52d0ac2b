/**
 * Remote paging on the main host of a split VM. Guest memory is registered with userfaultfd
 * (MISSING); a fault asks the page's holder for it, installs it with UFFDIO_COPY and main becomes its
 * holder. Over budget, main pages out the coldest pages (update history from the dirty log and
 * recent faults): it pauses the vCPUs for the copy and the hole punch only, then hands the pages to
 * their home sub-host. Every move goes through PageOwnership, so a page never has two holders or
 * none. A sub-host that fails pauses the VM with the reason; its faults wait until it is back.
 */
import { getLogger } from "@logtape/logtape";
import * as libc from "../ffi/libc.ts";
import { REGISTER_MODE, Userfaultfd } from "../ffi/uffd.ts";
import type { DirtyTracker } from "../memory/dirty_tracker.ts";
import { type GuestMemory, PAGE_SIZE } from "../memory/guest_memory.ts";
import { indexRuns } from "../memory/runs.ts";
import type { Identity } from "../net/identity.ts";
import { MAIN, PageOwnership } from "./ownership.ts";
import { SubHostDownError, SubLink } from "./sub_link.ts";
import { MAX_BATCH, PageOp } from "./wire.ts";

/** How a VM is split. */
export interface SplitSpec {
  /** Most guest memory main keeps resident, in bytes. */
  mainMemBytes: number;
  /** Sub-host agents, HOST:PORT. */
  subs: string[];
}

/** Paging counters, as `vm ls --json` shows them. */
export interface PagingStats {
  /** Pages brought to main. */
  pageIns: number;
  /** Pages sent from main to sub-hosts. */
  pageOuts: number;
  /** Guest faults on non-resident pages. */
  faults: number;
  /** Pages each host holds, by host name. */
  residentPages: Record<string, number>;
  /** Fault service time (fault read to page installed) over the last faults. */
  faultLatencyUs: { p50: number; p99: number };
  /** Most pages main keeps. */
  mainBudgetPages: number;
  /** Total vCPU pause of page-out batches, ms. */
  pageOutPauseMs: number;
  /** Why the VM is paused by paging (a sub-host is unreachable), when it is. */
  blocked?: string;
}

/** What the pager needs of the VM. */
export interface PausableVm {
  /** Pauses every vCPU (nests). */
  pause(): Promise<number>;
  /** Ends one pause. */
  resume(): void;
}

/** Pages per stripe when spreading a new VM's memory over the sub-hosts. */
const STRIPE = 512;
/** Pages fetched after a fault that continues a sequential run. */
const READ_AHEAD = 127;
/** Paging out starts above the budget and stops this far below it. */
const LOW_WATER = 0.97;
const DIRTY_SAMPLE_MS = 100;
const RECONNECT_MS = 500;
const LATENCY_SAMPLES = 8192;

const log = getLogger(["dcres", "paging"]);

/** The main host's pager of one split VM. */
export class RemotePager {
  private readonly uffd: Userfaultfd;
  private readonly lastTouch: Uint32Array;
  private readonly recent = new Set<number>();
  private readonly faultedWhileIn = new Set<number>();
  private readonly outWaiters = new Map<number, Array<() => void>>();
  private readonly waitingFor = new Map<number, Set<number>>();
  private readonly unreleased: Array<Set<number>>;
  private readonly inflight = new Set<Promise<unknown>>();
  private readonly latencies = new Float64Array(LATENCY_SAMPLES);
  private latencyCount = 0;
  private stopped = false;
  private blockedReason?: string;
  private reconnecting = new Set<number>();
  private counters = { pageIns: 0, pageOuts: 0, faults: 0, pageOutPauseMs: 0 };
  private readonly base: bigint;
  private readonly loops: Promise<void>[] = [];

  private constructor(
    private readonly mem: GuestMemory,
    private readonly vm: PausableVm,
    private readonly tracker: DirtyTracker,
    /** The holder table. */ readonly ownership: PageOwnership,
    private readonly links: SubLink[],
    private readonly budget: number,
    private readonly pinned: number,
  ) {
    this.uffd = Userfaultfd.open(0n);
    this.base = mem.hostAddr;
    this.lastTouch = new Uint32Array(mem.pages);
    this.unreleased = links.map(() => new Set<number>());
  }

  /**
   * Splits `mem`: pages below `pinnedPages` (what the VMM itself reads) stay on main, the rest are
   * striped over the sub-hosts as zero pages; then faults are served and the budget kept.
   */
  static async start(opts: {
    name: string;
    mem: GuestMemory;
    vm: PausableVm;
    tracker: DirtyTracker;
    split: SplitSpec;
    identity: Identity;
    pinnedPages: number;
  }): Promise<RemotePager> {
    const { mem, split } = opts;
    const pinned = opts.pinnedPages;
    const budget = Math.floor(split.mainMemBytes / PAGE_SIZE);
    if (split.subs.length < 1) throw new Error("a split VM needs at least one sub-host (--sub)");
    if (budget < pinned + MAX_BATCH) {
      throw new Error(
        `--main-mem ${split.mainMemBytes} bytes is too small: main needs at least ${
          (pinned + MAX_BATCH) * 4
        } KiB for the VMM's own pages and one paging batch`,
      );
    }
    const home = (g: number) => 1 + (Math.floor((g - pinned) / STRIPE) % split.subs.length);
    const own = new PageOwnership(
      mem.pages,
      split.subs.length + 1,
      (g) => g < pinned ? MAIN : home(g),
    );
    // The VMM reads the pinned pages from this thread, which must never fault: make them present.
    libc.madvise(
      Deno.UnsafePointer.create(mem.hostAddr)!,
      pinned * PAGE_SIZE,
      libc.MADV.POPULATE_WRITE,
    );
    libc.fallocate(
      mem.fd,
      libc.FALLOC.PUNCH_HOLE | libc.FALLOC.KEEP_SIZE,
      pinned * PAGE_SIZE,
      mem.size - pinned * PAGE_SIZE,
    );
    const links = split.subs.map((addr, i) =>
      new SubLink(i + 1, addr, opts.identity, opts.name, mem.pages)
    );
    await Promise.all(links.map(async (l) => {
      const held: number[] = [];
      for (let g = pinned; g < mem.pages; g++) if (own.holderOf(g) === l.index) held.push(g);
      const hold = indexRuns(held).map(([i, n]) => [held[i], n] as [number, number]);
      try {
        await l.connect(hold);
      } catch (e) {
        throw new Error(`sub-host ${l.addr}: ${(e as Error).message}`);
      }
    })).catch(async (e) => {
      await Promise.all(links.map((l) => l.drop()));
      links.forEach((l) => l.close());
      throw e;
    });
    const pager = new RemotePager(mem, opts.vm, opts.tracker, own, links, budget, pinned);
    pager.uffd.register(mem.hostAddr, mem.size, REGISTER_MODE.MISSING);
    pager.loops.push(pager.faultLoop(), pager.balanceLoop());
    log.info("split {name}: {pages} pages, main budget {budget}, sub-hosts {subs}", {
      name: opts.name,
      pages: mem.pages,
      budget,
      subs: links.map((l) => l.host),
    });
    return pager;
  }

  /** Counters and placement. */
  stats(): PagingStats {
    const counts = this.ownership.counts();
    const residentPages: Record<string, number> = { main: counts[MAIN] };
    for (const l of this.links) residentPages[l.host] = counts[l.index];
    const n = Math.min(this.latencyCount, LATENCY_SAMPLES);
    const lat = this.latencies.slice(0, n).sort();
    const pct = (p: number) => n ? Math.round(lat[Math.min(n - 1, Math.floor(n * p / 100))]) : 0;
    return {
      ...this.counters,
      pageOutPauseMs: Math.round(this.counters.pageOutPauseMs),
      residentPages,
      faultLatencyUs: { p50: pct(50), p99: pct(99) },
      mainBudgetPages: this.budget,
      ...(this.blockedReason ? { blocked: this.blockedReason } : {}),
    };
  }

  /** Why paging holds the VM paused, if it does. */
  get blocked(): string | undefined {
    return this.blockedReason;
  }

  // ---- faults ----

  private async faultLoop() {
    const batches = new Map<number, Array<{ g: number; t: number }>>();
    while (!this.stopped) {
      const [rev] = await libc.pollAsync([{ fd: this.uffd.fd, events: libc.POLL.IN }], 100);
      if (this.stopped) break;
      if (!(rev & libc.POLL.IN)) continue;
      const t = performance.now();
      for (let evs = this.uffd.readEvents(); evs.length; evs = this.uffd.readEvents()) {
        for (const ev of evs) {
          const g = Number((ev.address - this.base) / BigInt(PAGE_SIZE));
          if (g < 0 || g >= this.mem.pages) continue;
          this.counters.faults++;
          this.route(g, t, batches);
        }
      }
      for (const [host, faults] of batches) this.pageIn(host, faults);
      batches.clear();
    }
  }

  /** Decides how fault `g` is served: wait for a page-out, zero-fill, or fetch from its holder. */
  private route(g: number, t: number, batches: Map<number, Array<{ g: number; t: number }>>) {
    this.lastTouch[g] = this.tracker.currentEpoch;
    const own = this.ownership;
    if (own.isMovingOut(g)) {
      const w = this.outWaiters.get(g) ?? [];
      w.push(() => {
        const b = new Map<number, Array<{ g: number; t: number }>>();
        this.route(g, t, b);
        for (const [host, faults] of b) this.pageIn(host, faults);
      });
      this.outWaiters.set(g, w);
      return;
    }
    if (own.isMoving(g)) {
      // Being paged in: its UFFDIO_COPY wakes this fault too, unless that page-in fails.
      this.faultedWhileIn.add(g);
      return;
    }
    const holder = own.holderOf(g);
    if (holder === MAIN) {
      // Main's and not present: never written since main took it, so it is a zero page.
      this.place([g], (dst, len) => this.uffd.zeropage(dst, len));
      return;
    }
    const list = batches.get(holder) ?? [];
    list.push({ g, t });
    batches.set(holder, list);
  }

  /**
   * Fetches faulted pages from sub-host `host` on its urgent channel and, after a fault that
   * continues a sequential run, the pages that follow it on the bulk channel.
   */
  private pageIn(host: number, faults: Array<{ g: number; t: number }>) {
    const own = this.ownership;
    const idle = (g: number) => own.holderOf(g) === host && !own.isMoving(g);
    const urgent = [...new Set(faults.map((f) => f.g))].filter(idle).sort((a, b) => a - b);
    const ahead = new Set<number>();
    for (const { g } of faults) {
      if (this.recent.has(g - 1)) {
        for (let n = g + 1; n <= g + READ_AHEAD && n < this.mem.pages && idle(n); n++) {
          ahead.add(n);
        }
      }
      this.recent.add(g);
      if (this.recent.size > 256) this.recent.delete(this.recent.values().next().value!);
    }
    for (const g of urgent) ahead.delete(g);
    for (let i = 0; i < urgent.length; i += MAX_BATCH) {
      this.track(this.fetch(host, urgent.slice(i, i + MAX_BATCH), faults, true));
    }
    const rest = [...ahead].sort((a, b) => a - b);
    for (let i = 0; i < rest.length; i += MAX_BATCH) {
      this.track(this.fetch(host, rest.slice(i, i + MAX_BATCH), [], false));
    }
  }

  private async fetch(
    host: number,
    gfns: number[],
    faults: Array<{ g: number; t: number }>,
    urgent: boolean,
  ) {
    const own = this.ownership, link = this.links[host - 1];
    for (const g of gfns) own.beginIn(g);
    let data: Uint8Array | undefined;
    try {
      data = await link.request(PageOp.GET, Uint32Array.from(gfns), { urgent });
      if (!data || data.length !== gfns.length * PAGE_SIZE) {
        throw new Error(`${link.host} sent ${data?.length ?? 0} bytes for ${gfns.length} pages`);
      }
    } catch (e) {
      for (const g of gfns) own.abort(g);
      const mine = new Set(gfns);
      const waiting = new Set(faults.filter((f) => mine.has(f.g)).map((f) => f.g));
      for (const g of gfns) {
        if (this.faultedWhileIn.delete(g)) waiting.add(g);
      }
      this.block(
        host,
        [...waiting],
        e instanceof SubHostDownError ? e.reason : (e as Error).message,
      );
      return;
    }
    for (const g of gfns) this.faultedWhileIn.delete(g);
    const src = libc.ptrValue(Deno.UnsafePointer.of(data));
    for (const [i, n] of indexRuns(gfns)) {
      this.place(
        gfns.slice(i, i + n),
        (dst, len, at) => this.uffd.copy(dst, src + BigInt((i + at) * PAGE_SIZE), len),
      );
    }
    for (const g of gfns) own.endIn(g);
    this.counters.pageIns += gfns.length;
    const now = performance.now();
    const got = new Set(gfns);
    for (const f of faults) {
      if (got.has(f.g)) this.latencies[this.latencyCount++ % LATENCY_SAMPLES] = (now - f.t) * 1000;
    }
    for (const g of gfns) this.unreleased[host - 1].add(g);
    this.track(this.release(host, gfns));
  }

  /** Tells `host` it no longer holds `gfns` (main has them); retried after a reconnect. */
  private async release(host: number, gfns: number[]) {
    try {
      await this.links[host - 1].request(PageOp.RELEASE, Uint32Array.from(gfns));
      for (const g of gfns) this.unreleased[host - 1].delete(g);
    } catch {
      // Still in `unreleased`; sent again when the link is back.
    }
  }

  /**
   * Installs one run of gfns with `op(dst, len, indexInRun)`; pages a racing install put there first
   * (EEXIST) are skipped by falling back to one page at a time.
   */
  private place(run: number[], op: (dst: bigint, len: number, at: number) => number) {
    const dst = this.base + BigInt(run[0] * PAGE_SIZE);
    let done = 0;
    try {
      done = op(dst, run.length * PAGE_SIZE, 0);
    } catch {
      done = 0;
    }
    if (done === run.length * PAGE_SIZE) return;
    run.forEach((g, i) => {
      try {
        op(this.base + BigInt(g * PAGE_SIZE), PAGE_SIZE, i);
      } catch {
        // Already present.
      }
    });
  }

  // ---- failure ----

  /**
   * Pages of `host` cannot be fetched now: its link is failed and reconnected in the background;
   * when vCPUs wait on some of them (`faults`), the VM is paused with the reason until it is back.
   */
  private block(host: number, faults: number[], reason: string) {
    const set = this.waitingFor.get(host) ?? new Set<number>();
    for (const g of faults) set.add(g);
    if (set.size) this.waitingFor.set(host, set);
    if (set.size && !this.blockedReason && !this.stopped) {
      const l = this.links[host - 1];
      this.blockedReason = `paused: sub-host ${l.host} (${l.addr}) cannot serve its pages ` +
        `(${reason}); the VM resumes when it is back`;
      log.error("{reason}", { reason: this.blockedReason });
      void this.vm.pause();
    }
    this.links[host - 1].fail(reason);
    void this.reconnect(host);
  }

  private async reconnect(host: number) {
    if (this.reconnecting.has(host)) return;
    this.reconnecting.add(host);
    const link = this.links[host - 1];
    try {
      while (!this.stopped && link.down) {
        await new Promise((r) => setTimeout(r, RECONNECT_MS));
        try {
          await link.connect();
        } catch {
          // Still down; try again.
        }
      }
      if (this.stopped) return;
      log.info("sub-host {host} is back", { host: link.host });
      const todo = [...this.unreleased[host - 1]];
      for (let i = 0; i < todo.length; i += MAX_BATCH) {
        this.track(this.release(host, todo.slice(i, i + MAX_BATCH)));
      }
      const faults = [...(this.waitingFor.get(host) ?? [])];
      this.waitingFor.delete(host);
      const t = performance.now();
      const batches = new Map<number, Array<{ g: number; t: number }>>();
      for (const g of faults) this.route(g, t, batches);
      for (const [h, f] of batches) this.pageIn(h, f);
      if (this.waitingFor.size === 0 && this.blockedReason) {
        log.info("resuming: {was}", { was: this.blockedReason });
        this.blockedReason = undefined;
        this.vm.resume();
      }
    } finally {
      this.reconnecting.delete(host);
    }
  }

  // ---- budget ----

  private async balanceLoop() {
    let lastSample = 0;
    while (!this.stopped) {
      await new Promise((r) => setTimeout(r, 2));
      if (this.stopped) break;
      const now = performance.now();
      if (now - lastSample > DIRTY_SAMPLE_MS) {
        this.tracker.sample();
        lastSample = now;
      }
      const resident = this.ownership.counts()[MAIN];
      if (resident <= this.budget || this.blockedReason) continue;
      try {
        await this.pageOut(resident - Math.floor(this.budget * LOW_WATER));
      } catch (e) {
        if (!this.stopped) log.error("page-out failed: {error}", { error: (e as Error).message });
      }
    }
  }

  /** Main's coldest `n` pages that may leave (not pinned, not moving). */
  private coldest(n: number): number[] {
    const own = this.ownership, dirty = this.tracker.lastDirty, touch = this.lastTouch;
    const epochs = this.tracker.currentEpoch + 2;
    const count = new Uint32Array(epochs + 1);
    const key = (g: number) => Math.min(epochs, Math.max(dirty[g], touch[g]));
    for (let g = this.pinned; g < this.mem.pages; g++) {
      if (own.holderOf(g) === MAIN && !own.isMoving(g)) count[key(g)]++;
    }
    let cutoff = 0, taken = 0;
    while (cutoff <= epochs && taken + count[cutoff] < n) taken += count[cutoff++];
    const out: number[] = [];
    let atCutoff = n - taken;
    for (let g = this.pinned; g < this.mem.pages && out.length < n; g++) {
      if (own.holderOf(g) !== MAIN || own.isMoving(g)) continue;
      const k = key(g);
      if (k < cutoff) out.push(g);
      else if (k === cutoff && atCutoff > 0) {
        out.push(g);
        atCutoff--;
      }
    }
    return out;
  }

  /** The sub-host page `g` goes to: its home when that link is up, else any that is. */
  private destination(g: number): number {
    const homeIdx = Math.floor((g - this.pinned) / STRIPE) % this.links.length;
    for (let k = 0; k < this.links.length; k++) {
      const l = this.links[(homeIdx + k) % this.links.length];
      if (!l.down) return l.index;
    }
    return 0;
  }

  private async pageOut(n: number) {
    const victims = this.coldest(Math.min(n, 16 * MAX_BATCH));
    if (!victims.length) return;
    const groups = new Map<number, number[]>();
    for (const g of victims) {
      const d = this.destination(g);
      if (!d) return;
      const list = groups.get(d) ?? [];
      list.push(g);
      groups.set(d, list);
    }
    const batches: Array<{ host: number; gfns: number[]; data: Uint8Array }> = [];
    for (const [host, gfns] of groups) {
      for (let i = 0; i < gfns.length; i += MAX_BATCH) {
        const part = gfns.slice(i, i + MAX_BATCH);
        batches.push({ host, gfns: part, data: new Uint8Array(part.length * PAGE_SIZE) });
      }
    }
    // The guest must not write a page between its copy and its hole punch.
    this.counters.pageOutPauseMs += await this.vm.pause();
    const t0 = performance.now();
    try {
      for (const b of batches) {
        for (const [i, k] of indexRuns(b.gfns)) {
          b.data.set(this.mem.view(b.gfns[i] * PAGE_SIZE, k * PAGE_SIZE), i * PAGE_SIZE);
        }
        for (const g of b.gfns) this.ownership.beginOut(g, b.host);
      }
      const sorted = victims.slice().sort((a, b) => a - b);
      for (const [i, k] of indexRuns(sorted)) {
        libc.fallocate(
          this.mem.fd,
          libc.FALLOC.PUNCH_HOLE | libc.FALLOC.KEEP_SIZE,
          sorted[i] * PAGE_SIZE,
          k * PAGE_SIZE,
        );
      }
    } finally {
      this.counters.pageOutPauseMs += performance.now() - t0;
      this.vm.resume();
    }
    await Promise.all(batches.map((b) => this.put(b.host, b.gfns, b.data)));
  }

  /** Hands `gfns` to `host`; if it cannot take them, they go back into main's memory. */
  private async put(host: number, gfns: number[], data: Uint8Array) {
    const own = this.ownership;
    try {
      await this.links[host - 1].request(PageOp.PUT, Uint32Array.from(gfns), { data });
      for (const g of gfns) own.endOut(g);
      this.counters.pageOuts += gfns.length;
    } catch (e) {
      const src = libc.ptrValue(Deno.UnsafePointer.of(data));
      for (const [i, n] of indexRuns(gfns)) {
        this.place(
          gfns.slice(i, i + n),
          (dst, len, at) => this.uffd.copy(dst, src + BigInt((i + at) * PAGE_SIZE), len),
        );
      }
      for (const g of gfns) own.abort(g);
      log.warn("page-out to {host} failed, pages kept on main: {error}", {
        host: this.links[host - 1].host,
        error: (e as Error).message,
      });
      if (e instanceof SubHostDownError) void this.reconnect(host);
    } finally {
      for (const g of gfns) {
        const w = this.outWaiters.get(g);
        if (!w) continue;
        this.outWaiters.delete(g);
        for (const f of w) f();
      }
    }
  }

  private track(p: Promise<unknown>) {
    this.inflight.add(p);
    void p.finally(() => this.inflight.delete(p));
  }

  // ---- checks and shutdown ----

  /**
   * Pauses the VM, lets every move finish, and checks that each page has exactly one holder: the
   * ownership table, main's present pages and every sub-host's held bitmap must agree.
   */
  async check(): Promise<
    { ok: boolean; pages: number; holders: Record<string, number>; problems: string[] }
  > {
    await this.vm.pause();
    try {
      for (let i = 0; i < 1000 && this.inflight.size; i++) await Promise.all([...this.inflight]);
      const { counts, moving } = this.ownership.check();
      const problems: string[] = [];
      if (moving) problems.push(`${moving} pages still moving`);
      const bitmaps = await Promise.all(this.links.map((l) => l.held()));
      const present = new Uint8Array(this.mem.pages);
      for (const [off, len] of libc.dataRuns(this.mem.fd, this.mem.size)) {
        present.fill(1, off / PAGE_SIZE, (off + len) / PAGE_SIZE);
      }
      const has = (b: Uint8Array, g: number) => (b[g >> 3] & (1 << (g & 7))) !== 0;
      for (let g = 0; g < this.mem.pages && problems.length < 5; g++) {
        const h = this.ownership.holderOf(g);
        const subs = this.links.filter((_, k) => has(bitmaps[k], g)).map((l) => l.host);
        if (
          h === MAIN
            ? subs.length !== 0
            : present[g] || subs.length !== 1 || !has(bitmaps[h - 1], g)
        ) {
          problems.push(
            `gfn ${g}: table says ${h === MAIN ? "main" : this.links[h - 1].host}, main ${
              present[g] ? "has" : "lacks"
            } it, sub-hosts holding it: [${subs.join(", ")}]`,
          );
        }
      }
      const holders: Record<string, number> = { main: counts[MAIN] };
      for (const l of this.links) holders[l.host] = counts[l.index];
      return { ok: problems.length === 0, pages: this.mem.pages, holders, problems };
    } finally {
      this.vm.resume();
    }
  }

  /** Stops paging; `drop` deletes the VM's pages on the sub-hosts (the VM is gone for good). */
  async stop(drop: boolean): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    await Promise.all(this.loops);
    try {
      this.uffd.unregister(this.mem.hostAddr, this.mem.size);
    } catch {
      // Memory already unmapped.
    }
    this.uffd.close();
    if (drop) await Promise.all(this.links.map((l) => l.drop()));
    for (const l of this.links) l.close();
  }
}
