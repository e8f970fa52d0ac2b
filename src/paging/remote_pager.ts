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
import { FEATURE, installRun, PAGEFAULT_FLAG, REGISTER_MODE, Userfaultfd } from "../ffi/uffd.ts";
import type { DirtyTracker } from "../memory/dirty_tracker.ts";
import { type GuestMemory, PAGE_SIZE } from "../memory/guest_memory.ts";
import { indexRuns } from "../memory/runs.ts";
import type { Identity } from "../net/identity.ts";
import { MAIN, PageOwnership } from "./ownership.ts";
import type { OpenCheckpoint } from "../ckpt/restore.ts";
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
  /** Faults on never-written pages, filled with zeros on main without asking their sub-host. */
  zeroFills: number;
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
/** A split migration switches over once this few pages are left to resend. */
const FINAL_PAGES = 2048;
const MAX_ROUNDS = 5;
/** PUT/GET requests in flight during bulk copies. */
const COPY_STREAMS = 8;
/** Longest a release waits for others to share its message. */
const RELEASE_DELAY_MS = 5;
/** Longest `stop` waits for the fault and budget loops to notice. */
const STOP_WAIT_MS = 2000;

/** What starting or migrating into a split needs. */
export interface PagerOptions {
  /** VM name (names its page stores). */
  name: string;
  /** Guest memory. */
  mem: GuestMemory;
  /** The VM, for pauses. */
  vm: PausableVm;
  /** Its dirty log. */
  tracker: DirtyTracker;
  /** The split. */
  split: SplitSpec;
  /** Identity to reach the sub-hosts' agents with. */
  identity: Identity;
  /** Low pages the VMM reads itself; they never leave main. */
  pinnedPages: number;
}

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

/** Runs `fn` over `jobs`, COPY_STREAMS at a time (bulk copies keep that many requests in flight). */
async function inParallel<T>(jobs: T[], fn: (job: T) => Promise<void>): Promise<void> {
  let next = 0;
  const worker = async () => {
    while (next < jobs.length) await fn(jobs[next++]);
  };
  await Promise.all(Array.from({ length: COPY_STREAMS }, worker));
}

/** `xs` in slices of at most MAX_BATCH. */
function batches<T>(xs: T[]): T[][] {
  const out: T[][] = [];
  for (let i = 0; i < xs.length; i += MAX_BATCH) out.push(xs.slice(i, i + MAX_BATCH));
  return out;
}

/** The sub-host (1..subs) a page lives on by default: stripes of STRIPE pages, round robin. */
function homeOf(g: number, pinned: number, subs: number): number {
  return 1 + (Math.floor((g - pinned) / STRIPE) % subs);
}

function budgetOf(opts: PagerOptions): number {
  const budget = Math.floor(opts.split.mainMemBytes / PAGE_SIZE);
  if (opts.split.subs.length < 1) throw new Error("a split VM needs at least one sub-host (--sub)");
  if (budget < opts.pinnedPages + MAX_BATCH) {
    throw new Error(
      `--main-mem ${opts.split.mainMemBytes} bytes is too small: main needs at least ${
        (opts.pinnedPages + MAX_BATCH) * 4
      } KiB for the VMM's own pages and one paging batch`,
    );
  }
  return budget;
}

/** The VMM reads the pinned pages from its own thread, which must never fault: make them present. */
function populate(mem: GuestMemory, pinned: number) {
  libc.madvise(
    Deno.UnsafePointer.create(mem.hostAddr)!,
    pinned * PAGE_SIZE,
    libc.MADV.POPULATE_WRITE,
  );
}

/** 1 for each page present in main's memory. */
export function presentPages(mem: GuestMemory): Uint8Array {
  const present = new Uint8Array(mem.pages);
  for (const [off, len] of libc.dataRuns(mem.fd, mem.size)) {
    present.fill(1, off / PAGE_SIZE, (off + len) / PAGE_SIZE);
  }
  return present;
}

/** Connects every sub-host, starting its store afresh with the zero pages `holder` gives it. */
async function connectAll(
  opts: PagerOptions,
  holder: (g: number) => number,
): Promise<SubLink[]> {
  const { mem } = opts;
  const links = opts.split.subs.map((addr, i) =>
    new SubLink(i + 1, addr, opts.identity, opts.name, mem.pages)
  );
  const held: number[][] = links.map(() => []);
  for (let g = opts.pinnedPages; g < mem.pages; g++) {
    const h = holder(g);
    if (h !== MAIN) held[h - 1].push(g);
  }
  await Promise.all(links.map(async (l, k) => {
    const hold = indexRuns(held[k]).map(([i, n]) => [held[k][i], n] as [number, number]);
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
  return links;
}

/** What a checkpoint under way needs to hear of the pager. */
export interface PageOutSaver {
  /** `gfns` (contents in `data`) are about to leave main: save those that need it first. */
  leavingMain(gfns: number[], data: Uint8Array): Promise<void>;
}

/** A lazy split restore's pages of main still to install from the checkpoint. */
class LocalPages {
  static readonly BATCH = 512;
  /** 1: main holds the page and its bytes are still only in the checkpoint. */
  readonly pending: Uint8Array;
  left = 0;
  readonly staging = new Uint8Array(LocalPages.BATCH * PAGE_SIZE);
  readonly done: Promise<void>;
  private resolve!: () => void;

  constructor(readonly ck: OpenCheckpoint, holder: Uint8Array, pinned: number) {
    this.pending = new Uint8Array(holder.length);
    for (let g = pinned; g < holder.length; g++) {
      if (holder[g] === MAIN) {
        this.pending[g] = 1;
        this.left++;
      }
    }
    this.done = new Promise((r) => this.resolve = r);
  }

  installed(g: number) {
    if (this.pending[g]) {
      this.pending[g] = 0;
      this.left--;
    }
  }

  finish() {
    this.ck.close();
    this.resolve();
  }
}

/** The main host's pager of one split VM. */
export class RemotePager {
  /** The checkpoint under way, told of every page-out. */
  saver?: PageOutSaver;
  /**
   * A copy-on-write checkpoint's hook: the guest is about to write `gfn`, which main protected;
   * it keeps the old contents first.
   */
  onWriteProtected?: (gfn: number) => void;
  /** A lazy restore's pages of main not installed yet. */
  private local?: LocalPages;
  private memoryLock: Promise<unknown> = Promise.resolve();
  private readonly uffd: Userfaultfd;
  private readonly lastTouch: Uint32Array;
  private readonly recent = new Set<number>();
  private readonly faultedWhileIn = new Set<number>();
  /**
   * 1: the page's sub-host holds it as a zero page it was given without data and never sent since,
   * so a fault needs no round trip: main takes it over as a zero page and releases the sub's copy.
   */
  private readonly zero: Uint8Array;
  private readonly settleWaiters = new Map<number, Array<() => void>>();
  private readonly waitingFor = new Map<number, Set<number>>();
  private readonly unreleased: Array<Set<number>>;
  private readonly releaseQueue: Array<Set<number>>;
  private readonly releaseTimers: Array<ReturnType<typeof setTimeout> | undefined>;
  private readonly inflight = new Set<Promise<unknown>>();
  private readonly latencies = new Float64Array(LATENCY_SAMPLES);
  private latencyCount = 0;
  private stopped = false;
  private blockedReason?: string;
  private reconnecting = new Set<number>();
  private counters = { pageIns: 0, pageOuts: 0, faults: 0, zeroFills: 0, pageOutPauseMs: 0 };
  private readonly base: bigint;
  private readonly loops: Promise<void>[] = [];

  private readonly replaced = new Map<number, number>();
  private readonly stripes: number;

  private readonly name: string;
  private readonly identity: Identity;
  private readonly mem: GuestMemory;
  private readonly vm: PausableVm;
  private readonly tracker: DirtyTracker;
  private readonly pinned: number;

  private constructor(
    opts: PagerOptions,
    /** The holder table. */ readonly ownership: PageOwnership,
    private readonly links: SubLink[],
    private budget: number,
  ) {
    this.name = opts.name;
    this.identity = opts.identity;
    this.mem = opts.mem;
    this.vm = opts.vm;
    this.tracker = opts.tracker;
    this.pinned = opts.pinnedPages;
    // Write protection too: a copy-on-write checkpoint protects main's pages in place.
    this.uffd = Userfaultfd.open(FEATURE.WP_HUGETLBFS_SHMEM);
    this.base = this.mem.hostAddr;
    this.lastTouch = new Uint32Array(this.mem.pages);
    this.zero = new Uint8Array(this.mem.pages);
    this.unreleased = links.map(() => new Set<number>());
    this.releaseQueue = links.map(() => new Set<number>());
    this.releaseTimers = links.map(() => undefined);
    this.stripes = links.length;
  }

  /**
   * Splits a VM that has not run yet: pages below `pinnedPages` (what the VMM itself reads) stay on
   * main, the rest are striped over the sub-hosts as zero pages; then faults are served and the
   * budget kept.
   */
  static async start(opts: PagerOptions): Promise<RemotePager> {
    const { mem } = opts;
    const pinned = opts.pinnedPages;
    const budget = budgetOf(opts);
    const own = new PageOwnership(
      mem.pages,
      opts.split.subs.length + 1,
      (g) => g < pinned ? MAIN : homeOf(g, pinned, opts.split.subs.length),
    );
    populate(mem, pinned);
    libc.fallocate(
      mem.fd,
      libc.FALLOC.PUNCH_HOLE | libc.FALLOC.KEEP_SIZE,
      pinned * PAGE_SIZE,
      mem.size - pinned * PAGE_SIZE,
    );
    const links = await connectAll(opts, (g) => own.holderOf(g));
    const pager = new RemotePager(opts, own, links, budget);
    pager.zero.fill(1, pinned);
    pager.run("started");
    return pager;
  }

  /**
   * Takes over a split restore: every sub-host's store already holds the pages `holder` gives it
   * (loaded from its fragments), main's memory the rest; then faults are served and the budget kept.
   */
  static async adopt(
    opts: PagerOptions,
    holder: Uint8Array,
    lazy?: OpenCheckpoint,
  ): Promise<RemotePager> {
    const { mem } = opts;
    // The pages the VMM reads itself must be in before userfaultfd is armed.
    if (lazy) lazy.load(mem, Array.from({ length: opts.pinnedPages }, (_, g) => g));
    const subs = opts.split.subs.length;
    const own = new PageOwnership(mem.pages, subs + 1, (g) => holder[g]);
    for (let g = 0; g < opts.pinnedPages; g++) {
      if (holder[g] !== MAIN) throw new Error(`page ${g} the VMM reads must be on main`);
    }
    const budget = budgetOf(opts);
    populate(mem, opts.pinnedPages);
    const links = opts.split.subs.map((addr, i) =>
      new SubLink(i + 1, addr, opts.identity, opts.name, mem.pages)
    );
    const counts = own.counts();
    try {
      await Promise.all(links.map(async (l) => {
        const held = await l.connect().catch((e) => {
          throw new Error(`sub-host ${l.addr}: ${(e as Error).message}`);
        });
        if (held !== counts[l.index]) {
          throw new Error(
            `sub-host ${l.host} holds ${held} pages of ${opts.name}, the restore gave it ${
              counts[l.index]
            }`,
          );
        }
      }));
    } catch (e) {
      links.forEach((l) => l.close());
      throw e;
    }
    const pager = new RemotePager(opts, own, links, budget);
    if (lazy) pager.local = new LocalPages(lazy, holder, opts.pinnedPages);
    pager.run("restored");
    return pager;
  }

  /**
   * Splits a running VM, pre-copy style and without paging: the hottest pages (recently written)
   * stay on main up to its budget; the others are copied to their sub-hosts while the guest runs,
   * in rounds that resend what it wrote meanwhile; a short pause sends the last dirty ones, drops
   * the departed pages from main and arms userfaultfd. No fault is served remotely before that.
   */
  static async migrate(opts: PagerOptions): Promise<{ pager: RemotePager; report: SplitReport }> {
    const { mem, tracker } = opts;
    const t0 = performance.now();
    const pinned = opts.pinnedPages, subs = opts.split.subs.length;
    const budget = budgetOf(opts);
    populate(mem, pinned);
    const present = presentPages(mem);
    tracker.sample();
    const hot: number[] = [], zero: number[] = [];
    for (let g = pinned; g < mem.pages; g++) (present[g] ? hot : zero).push(g);
    hot.sort((a, b) => tracker.lastDirty[b] - tracker.lastDirty[a]);
    const keepN = Math.max(0, Math.floor(budget * LOW_WATER) - pinned);
    const out = hot.slice(keepN).sort((a, b) => a - b);
    const zeroSet = new Set(zero);
    const links = await connectAll(opts, (g) => zeroSet.has(g) ? homeOf(g, pinned, subs) : MAIN);
    const own = new PageOwnership(mem.pages, subs + 1, () => MAIN);
    const pager = new RemotePager(opts, own, links, budget);
    try {
      const report = await pager.precopyOut(out, zero, t0);
      return { pager, report };
    } catch (e) {
      await Promise.all(links.map((l) => l.drop()));
      links.forEach((l) => l.close());
      throw e;
    }
  }

  /** Copies `out` to the sub-hosts in rounds, then switches over in one pause. */
  private async precopyOut(
    out: number[],
    zero: number[],
    t0: number,
  ): Promise<SplitReport> {
    const tracker = this.tracker;
    // Every read of the dirty log counts, whoever makes it: a read whose bits were dropped once let
    // a page written between two rounds leave with the contents of the round before (stale).
    const written = new Uint8Array(Math.ceil(this.mem.pages / 64) * 8);
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
        await this.copyOut(todo);
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
      await this.vm.pause();
      ({ rewritten, handed } = this.switchOver(out, zero, todo, takeWritten()));
    } finally {
      tracker.onSample = chained;
    }
    const downtimeMs = performance.now() - pauseAt;
    for (const [host, gfns] of this.byHome(rewritten)) this.queueRelease(host, gfns);
    return {
      ms: performance.now() - t0,
      downtimeMs,
      rounds,
      pagesSent: sent,
      handedOver: handed,
      keptOnMain: this.ownership.counts()[MAIN],
      remoteFaults: this.counters.faults,
    };
  }

  /**
   * The paused switchover of a split migration: sent pages the guest wrote since (`dirty`) and
   * written zero pages stay on main; the rest now belong to their sub-hosts. Resumes the VM.
   */
  private switchOver(
    out: number[],
    zero: number[],
    todo: number[],
    dirty: Uint8Array,
  ): { rewritten: number[]; handed: number } {
    let rewritten: number[];
    let handed = 0;
    try {
      const present = presentPages(this.mem);
      const stay = new Set(todo);
      for (const g of out) if (dirty[g >> 3] & (1 << (g & 7))) stay.add(g);
      // Sent pages written again, and zero pages written at all, stay on main: their sub-hosts
      // must let go of the copies they were given.
      rewritten = [...out.filter((g) => stay.has(g)), ...zero.filter((g) => present[g])];
      const sentAndClean = out.filter((g) => !stay.has(g));
      const leaving = [...sentAndClean, ...zero.filter((g) => !present[g])];
      for (const g of leaving) {
        this.ownership.beginOut(g, this.homeOf(g));
        this.ownership.endOut(g);
      }
      for (const g of zero) if (!present[g]) this.zero[g] = 1;
      handed = leaving.length;
      this.punch(sentAndClean);
      this.run("migrated");
    } finally {
      this.vm.resume();
    }
    return { rewritten, handed };
  }

  /** `gfns` grouped by sub-host (`hostOf`, by default their home). */
  private byHome(gfns: number[], hostOf = (g: number) => this.homeOf(g)): Map<number, number[]> {
    const groups = new Map<number, number[]>();
    for (const g of gfns) {
      const h = hostOf(g);
      const list = groups.get(h) ?? [];
      list.push(g);
      groups.set(h, list);
    }
    return groups;
  }

  /** Sends `gfns` (still main's) to their home sub-hosts without changing their holder. */
  private async copyOut(gfns: number[]) {
    await inParallel(this.batchesFor(gfns), async (b) => {
      this.cancelReleases(b.host, b.gfns);
      await this.links[b.host - 1].request(PageOp.PUT, Uint32Array.from(b.gfns), { data: b.data });
    });
  }

  /** `gfns` grouped by sub-host (`hostOf`, by default their home) in batches, with their contents. */
  private batchesFor(
    gfns: number[],
    hostOf?: (g: number) => number,
  ): Array<{ host: number; gfns: number[]; data: Uint8Array }> {
    const out: Array<{ host: number; gfns: number[]; data: Uint8Array }> = [];
    for (const [host, list] of this.byHome(gfns, hostOf)) {
      for (const part of batches(list)) {
        const data = new Uint8Array(part.length * PAGE_SIZE);
        for (const [k, n] of indexRuns(part)) {
          data.set(this.mem.view(part[k] * PAGE_SIZE, n * PAGE_SIZE), k * PAGE_SIZE);
        }
        out.push({ host, gfns: part, data });
      }
    }
    return out;
  }

  /**
   * Runs `fn` while no move can begin (page-outs and moves across begin under it): a checkpoint
   * reads main's pages from memory, and takes its consistency point, under it.
   */
  withMemory<T>(fn: () => Promise<T> | T): Promise<T> {
    const p = this.memoryLock.then(fn);
    this.memoryLock = p.catch(() => {});
    return p;
  }

  /** Resolves once a lazy restore's pages of main are all installed (undefined: none pending). */
  get localDone(): Promise<void> | undefined {
    return this.local?.done;
  }

  /** The guest memory the pager serves. */
  get memory(): GuestMemory {
    return this.mem;
  }

  /** Sub-hosts in service, with their index in the ownership table. */
  subLinks(): SubLink[] {
    return this.active();
  }

  /**
   * Reconnects the sub-hosts whose links are down (nothing may have asked them for a page since
   * they came back) and waits up to `timeoutMs` for them; throws naming those still unreachable.
   */
  async ensureLinks(timeoutMs = 10_000): Promise<void> {
    const deadline = performance.now() + timeoutMs;
    for (const l of this.active()) if (l.down) void this.reconnect(l.index);
    while (this.active().some((l) => l.down) && performance.now() < deadline) {
      await new Promise((r) => setTimeout(r, 100));
    }
    const down = this.active().filter((l) => l.down);
    if (down.length) {
      throw new SubHostDownError(
        down.map((l) => `${l.host} (${l.addr})`).join(", "),
        `${down[0].down}; its pages cannot be saved until it is back`,
      );
    }
  }

  /** Pages `host` holds that are not moving. */
  idleHeldBy(host: number): number[] {
    const out: number[] = [];
    for (let g = this.pinned; g < this.mem.pages; g++) {
      if (this.ownership.holderOf(g) === host && !this.ownership.isMoving(g)) out.push(g);
    }
    return out;
  }

  /** Sets or clears (waking writers) write protection of main's pages in `runs` [gfn, count]. */
  protect(runs: Array<[number, number]>, on: boolean): void {
    for (const [g, n] of runs) {
      this.uffd.writeProtect(this.base + BigInt(g * PAGE_SIZE), n * PAGE_SIZE, on);
    }
  }

  /** Drops `gfns` from main's memory (they must be paused or protected). */
  private punch(gfns: number[]) {
    const sorted = gfns.slice().sort((a, b) => a - b);
    // A page leaves unprotected, so nothing of a copy-on-write checkpoint outlives it.
    if (this.onWriteProtected) {
      this.protect(indexRuns(sorted).map(([i, k]) => [sorted[i], k] as [number, number]), false);
    }
    for (const [i, k] of indexRuns(sorted)) {
      libc.fallocate(
        this.mem.fd,
        libc.FALLOC.PUNCH_HOLE | libc.FALLOC.KEEP_SIZE,
        sorted[i] * PAGE_SIZE,
        k * PAGE_SIZE,
      );
    }
  }

  /** The sub-host page `g` goes to by default, after any replacement of its original home. */
  private homeOf(g: number): number {
    let h = homeOf(g, this.pinned, this.stripes);
    for (let r = this.replaced.get(h); r !== undefined; r = this.replaced.get(h)) h = r;
    return h;
  }

  /** Arms userfaultfd and starts serving faults and keeping the budget. */
  private run(what: string) {
    this.uffd.register(
      this.mem.hostAddr,
      this.mem.size,
      REGISTER_MODE.MISSING | REGISTER_MODE.WP,
    );
    this.loops.push(this.faultLoop(), this.balanceLoop());
    if (this.local) this.loops.push(this.localLoop());
    log.info("split {what}: {pages} pages, main budget {budget}, sub-hosts {subs}", {
      what,
      pages: this.mem.pages,
      budget: this.budget,
      subs: this.links.map((l) => l.host),
    });
  }

  /**
   * Brings every page back to main while the guest runs (faults are still served), then stops
   * paging and deletes the pages on the sub-hosts: the VM is a one-host VM again.
   */
  /**
   * Brings every page to main and keeps it there until `releaseMain` (the traditional checkpoint of
   * a split VM: it then reads all of guest memory from this thread, which must never fault).
   */
  async pullToMain(): Promise<void> {
    this.savedBudget ??= this.budget;
    this.budget = this.mem.pages;
    await this.pullAll();
  }

  /** Ends `pullToMain`: the budget applies again and the coldest pages leave. */
  releaseMain(): void {
    if (this.savedBudget !== undefined) this.budget = this.savedBudget;
    this.savedBudget = undefined;
  }

  private savedBudget?: number;

  async gather(): Promise<{ ms: number; pagesIn: number }> {
    const t0 = performance.now(), before = this.counters.pageIns, budget = this.budget;
    this.budget = this.mem.pages;
    try {
      await this.pullAll();
    } catch (e) {
      this.budget = budget;
      throw e;
    }
    await this.stop(true);
    return { ms: performance.now() - t0, pagesIn: this.counters.pageIns - before };
  }

  private async pullAll() {
    for (let pass = 0; this.ownership.counts()[MAIN] < this.mem.pages; pass++) {
      if (this.blockedReason) throw new Error(`cannot gather: ${this.blockedReason}`);
      if (pass > 1000) throw new Error("cannot gather: pages keep moving");
      const jobs = this.links.flatMap((l) =>
        batches(this.idleHeldBy(l.index)).map((gfns) => [l.index, gfns] as const)
      );
      await inParallel(jobs, ([host, gfns]) => this.fetch(host, gfns, [], false));
      await Promise.all([...this.inflight]);
    }
  }

  /** Counters and placement. */
  stats(): PagingStats {
    const counts = this.ownership.counts();
    const residentPages: Record<string, number> = { main: counts[MAIN] };
    for (const l of this.active()) residentPages[l.host] = counts[l.index];
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
          if (ev.flags & PAGEFAULT_FLAG.WP) {
            this.onWriteProtected?.(g);
            this.protect([[g, 1]], false);
            continue;
          }
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
    if (own.isLeaving(g)) {
      const w = this.settleWaiters.get(g) ?? [];
      w.push(() => {
        const b = new Map<number, Array<{ g: number; t: number }>>();
        this.route(g, t, b);
        for (const [host, faults] of b) this.pageIn(host, faults);
      });
      this.settleWaiters.set(g, w);
      return;
    }
    if (own.isMoving(g)) {
      // Being paged in: its UFFDIO_COPY wakes this fault too, unless that page-in fails.
      this.faultedWhileIn.add(g);
      return;
    }
    const holder = own.holderOf(g);
    if (holder === MAIN) {
      if (this.local?.pending[g]) this.installLocal([g]);
      // Main's and not present: never written since main took it, so it is a zero page.
      else this.place([g], (dst, len) => this.uffd.zeropage(dst, len));
      return;
    }
    if (this.zero[g]) {
      own.beginIn(g);
      this.place([g], (dst, len) => this.uffd.zeropage(dst, len));
      own.endIn(g);
      this.zero[g] = 0;
      this.counters.zeroFills++;
      this.queueRelease(holder, [g]);
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
        for (
          let n = g + 1;
          n <= g + READ_AHEAD && n < this.mem.pages && idle(n) && !this.zero[n];
          n++
        ) {
          ahead.add(n);
        }
      }
      this.recent.add(g);
      if (this.recent.size > 256) this.recent.delete(this.recent.values().next().value!);
    }
    for (const g of urgent) ahead.delete(g);
    for (const b of batches(urgent)) this.track(this.fetch(host, b, faults, true));
    for (const b of batches([...ahead].sort((a, b) => a - b))) {
      this.track(this.fetch(host, b, [], false));
    }
  }

  private async fetch(
    host: number,
    gfns: number[],
    faults: Array<{ g: number; t: number }>,
    urgent: boolean,
  ) {
    const own = this.ownership, link = this.links[host - 1];
    // Pages that moved since they were picked (a fault got there first) are not fetched again.
    gfns = gfns.filter((g) => own.holderOf(g) === host && !own.isMoving(g));
    if (!gfns.length) return;
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
    for (const g of gfns) {
      own.endIn(g);
      this.zero[g] = 0;
    }
    this.counters.pageIns += gfns.length;
    const now = performance.now();
    const got = new Set(gfns);
    for (const f of faults) {
      if (got.has(f.g)) this.latencies[this.latencyCount++ % LATENCY_SAMPLES] = (now - f.t) * 1000;
    }
    this.queueRelease(host, gfns);
  }

  /**
   * Queues telling `host` it no longer holds `gfns`; releases go out in batches (a full batch, or
   * after RELEASE_DELAY_MS), so a fault costs the sub-host one message, not two.
   */
  private queueRelease(host: number, gfns: number[]) {
    const q = this.releaseQueue[host - 1];
    for (const g of gfns) {
      this.unreleased[host - 1].add(g);
      q.add(g);
    }
    if (q.size >= MAX_BATCH) this.flushReleases(host);
    else if (!this.releaseTimers[host - 1]) {
      this.releaseTimers[host - 1] = setTimeout(() => this.flushReleases(host), RELEASE_DELAY_MS);
    }
  }

  private flushReleases(host: number) {
    clearTimeout(this.releaseTimers[host - 1]);
    this.releaseTimers[host - 1] = undefined;
    const q = [...this.releaseQueue[host - 1]];
    this.releaseQueue[host - 1].clear();
    for (const b of batches(q)) this.track(this.release(host, b));
  }

  /**
   * `gfns` are about to be PUT on `host` again: a release of them not sent yet must not be, or it
   * would arrive after the PUT and undo it. (One already sent is ahead of the PUT on the same
   * channel, so it is harmless.)
   */
  private cancelReleases(host: number, gfns: ArrayLike<number>) {
    for (let i = 0; i < gfns.length; i++) {
      this.releaseQueue[host - 1].delete(gfns[i]);
      this.unreleased[host - 1].delete(gfns[i]);
    }
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
    installRun(this.base, PAGE_SIZE, run, op);
  }

  /** Installs main's lazily restored pages `gfns` (those still pending) from the checkpoint. */
  private installLocal(gfns: number[]) {
    const l = this.local!;
    const todo = gfns.filter((g) => l.pending[g]).sort((a, b) => a - b);
    if (!todo.length) return;
    l.ck.install(this.uffd, this.base, todo, l.staging);
    for (const g of todo) l.installed(g);
  }

  /** Installs the rest of a lazy restore's pages of main, most recently used first. */
  private async localLoop() {
    const l = this.local!;
    const order = l.ck.manifest.prefetchOrder;
    let next = 0;
    try {
      while (!this.stopped && l.left > 0) {
        const batch: number[] = [];
        while (next < order.length && batch.length < LocalPages.BATCH) {
          const g = order[next++];
          if (l.pending[g]) batch.push(g);
        }
        if (!batch.length) {
          for (let g = 0; g < this.mem.pages && batch.length < LocalPages.BATCH; g++) {
            if (l.pending[g]) batch.push(g);
          }
        }
        this.installLocal(batch);
        await new Promise((r) => setTimeout(r, 0));
      }
    } finally {
      l.finish();
    }
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
      this.releaseQueue[host - 1].clear();
      this.queueRelease(host, [...this.unreleased[host - 1]]);
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
    // A lazily restored page not installed yet cannot leave (its bytes are not in memory yet).
    const movable = (g: number) =>
      own.holderOf(g) === MAIN && !own.isMoving(g) && !this.local?.pending[g];
    for (let g = this.pinned; g < this.mem.pages; g++) if (movable(g)) count[key(g)]++;
    let cutoff = 0, taken = 0;
    while (cutoff <= epochs && taken + count[cutoff] < n) taken += count[cutoff++];
    const out: number[] = [];
    let atCutoff = n - taken;
    for (let g = this.pinned; g < this.mem.pages && out.length < n; g++) {
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

  /** The sub-host page `g` goes to: its home when that link is up, else any that is. */
  private destination(g: number): number {
    const home = this.homeOf(g) - 1;
    for (let k = 0; k < this.links.length; k++) {
      const l = this.links[(home + k) % this.links.length];
      if (!l.down && !l.draining && !l.retired) return l.index;
    }
    return 0;
  }

  private async pageOut(n: number) {
    const victims = this.coldest(Math.min(n, 16 * MAX_BATCH));
    if (!victims.length) return;
    const dest = new Map<number, number>();
    for (const g of victims) {
      const d = this.destination(g);
      if (!d) return;
      dest.set(g, d);
    }
    const out = await this.withMemory(async () => {
      // The guest must not write a page between its copy and its hole punch.
      const parked = await this.vm.pause();
      this.counters.pageOutPauseMs += parked;
      if (this.stopped) {
        this.vm.resume();
        return [];
      }
      const t0 = performance.now();
      try {
        const out = this.batchesFor(
          victims.filter((g) => this.ownership.holderOf(g) === MAIN && !this.ownership.isMoving(g)),
          (g) => dest.get(g)!,
        );
        for (const b of out) for (const g of b.gfns) this.ownership.beginOut(g, b.host);
        this.punch(out.flatMap((b) => b.gfns));
        return out;
      } finally {
        this.counters.pageOutPauseMs += performance.now() - t0;
        this.vm.resume();
      }
    });
    await Promise.all(out.map(async (b) => {
      try {
        await this.saver?.leavingMain(b.gfns, b.data);
      } catch (e) {
        // Unsaved, the page must not leave: it goes back into main's memory.
        this.putBack(b.gfns, b.data);
        this.settle(b.gfns);
        throw e;
      }
      await this.put(b.host, b.gfns, b.data);
    }));
  }

  /** Hands `gfns` to `host`; if it cannot take them, they go back into main's memory. */
  private async put(host: number, gfns: number[], data: Uint8Array) {
    const own = this.ownership;
    try {
      this.cancelReleases(host, gfns);
      await this.links[host - 1].request(PageOp.PUT, Uint32Array.from(gfns), { data });
      for (const g of gfns) {
        own.endOut(g);
        this.zero[g] = 0;
      }
      this.counters.pageOuts += gfns.length;
    } catch (e) {
      this.putBack(gfns, data);
      log.warn("page-out to {host} failed, pages kept on main: {error}", {
        host: this.links[host - 1].host,
        error: (e as Error).message,
      });
      if (e instanceof SubHostDownError) void this.reconnect(host);
    } finally {
      this.settle(gfns);
    }
  }

  /** A page-out of `gfns` failed: their contents go back into main's memory, which keeps them. */
  private putBack(gfns: number[], data: Uint8Array) {
    const src = libc.ptrValue(Deno.UnsafePointer.of(data));
    for (const [i, n] of indexRuns(gfns)) {
      this.place(
        gfns.slice(i, i + n),
        (dst, len, at) => this.uffd.copy(dst, src + BigInt((i + at) * PAGE_SIZE), len),
      );
    }
    for (const g of gfns) this.ownership.abort(g);
  }

  /** Faults that waited for `gfns` to finish leaving main or a sub-host are routed again. */
  private settle(gfns: number[]) {
    for (const g of gfns) {
      const w = this.settleWaiters.get(g);
      if (!w) continue;
      this.settleWaiters.delete(g);
      for (const f of w) f();
    }
  }

  /** Sub-hosts in service (not replaced by `moveSub`). */
  private active(): SubLink[] {
    return this.links.filter((l) => !l.retired);
  }

  /**
   * Moves every page sub-host `from` holds to `to` (a host new to this VM) while the guest runs,
   * for maintenance of `from`: main copies them across in batches; a fault on a page in flight
   * waits for it and is then served by `to`. `from` takes no new pages meanwhile and its store is
   * deleted at the end.
   */
  async moveSub(from: string, to: string): Promise<{ ms: number; pages: number }> {
    const t0 = performance.now();
    const old = this.active().find((l) => l.addr === from || l.host === from);
    if (!old) {
      throw new Error(
        `${from} is not one of its sub-hosts (${this.active().map((l) => l.addr).join(", ")})`,
      );
    }
    if (this.active().some((l) => l.addr === to)) {
      throw new Error(`${to} already holds part of it; name a host new to this VM`);
    }
    if (old.down) {
      throw new Error(`${from} is unreachable (${old.down}); its pages cannot be moved`);
    }
    const link = new SubLink(this.links.length + 1, to, this.identity, this.name, this.mem.pages);
    try {
      await link.connect([]);
    } catch (e) {
      throw new Error(`${to}: ${(e as Error).message}`);
    }
    const idx = this.ownership.addHost();
    this.links.push(link);
    this.unreleased.push(new Set());
    this.releaseQueue.push(new Set());
    this.releaseTimers.push(undefined);
    this.replaced.set(old.index, idx);
    old.draining = true;
    let moved = 0;
    for (let pass = 0; this.ownership.counts()[old.index] > 0; pass++) {
      if (pass > 100) throw new Error(`pages of ${from} keep moving; try again`);
      await inParallel(batches(this.idleHeldBy(old.index)), async (gfns) => {
        const n = await this.across(old.index, idx, gfns);
        moved += n;
      });
      await Promise.all([...this.inflight]);
    }
    await old.drop();
    old.close();
    old.retired = true;
    log.info("{from} replaced by {to}: {pages} pages moved", { from, to, pages: moved });
    return { ms: performance.now() - t0, pages: moved };
  }

  /** Moves `gfns` from sub-host `from` to sub-host `to` through main; returns how many moved. */
  private async across(from: number, to: number, gfns: number[]): Promise<number> {
    const own = this.ownership;
    // Begun under the memory lock: a checkpoint's consistency point holds it until every sub-host
    // knows what it owes, so no page leaves a sub-host unsaved in between.
    gfns = await this.withMemory(() => {
      const idle = gfns.filter((g) => own.holderOf(g) === from && !own.isMoving(g));
      for (const g of idle) own.beginAcross(g, to);
      return idle;
    });
    if (!gfns.length) return 0;
    try {
      const list = Uint32Array.from(gfns);
      const data = await this.links[from - 1].request(PageOp.GET, list);
      this.cancelReleases(to, gfns);
      await this.links[to - 1].request(PageOp.PUT, list, { data });
      for (const g of gfns) {
        own.endAcross(g);
        this.zero[g] = 0;
      }
      return gfns.length;
    } catch (e) {
      for (const g of gfns) own.abort(g);
      throw e;
    } finally {
      this.settle(gfns);
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
      await this.drain();
      const { counts, moving } = this.ownership.check();
      const problems: string[] = [];
      if (moving) problems.push(`${moving} pages still moving`);
      const links = this.active();
      const bitmaps = await Promise.all(links.map((l) => l.held()));
      const present = presentPages(this.mem);
      const has = (b: Uint8Array, g: number) => (b[g >> 3] & (1 << (g & 7))) !== 0;
      for (let g = 0; g < this.mem.pages && problems.length < 5; g++) {
        const h = this.ownership.holderOf(g);
        const subs = links.filter((_, k) => has(bitmaps[k], g)).map((l) => l.host);
        const k = links.findIndex((l) => l.index === h);
        if (
          h === MAIN ? subs.length !== 0 : present[g] || subs.length !== 1 || !has(bitmaps[k], g)
        ) {
          problems.push(
            `gfn ${g}: table says ${h === MAIN ? "main" : this.links[h - 1].host}, main ${
              present[g] ? "has" : "lacks"
            } it, sub-hosts holding it: [${subs.join(", ")}]`,
          );
        }
      }
      const holders: Record<string, number> = { main: counts[MAIN] };
      for (const l of links) holders[l.host] = counts[l.index];
      return { ok: problems.length === 0, pages: this.mem.pages, holders, problems };
    } finally {
      this.vm.resume();
    }
  }

  /**
   * With the vCPUs paused: lets the moves under way (page-ins, page-outs, releases) finish, so the
   * ownership table, main's memory and the sub-hosts' stores agree.
   */
  async drain(timeoutMs = 30_000): Promise<void> {
    const deadline = performance.now() + timeoutMs;
    const busy = () => {
      for (const l of this.active()) this.flushReleases(l.index);
      return this.inflight.size > 0 || this.ownership.check().moving > 0;
    };
    while (busy() && performance.now() < deadline) {
      // A timer, not only the moves in flight: with none tracked (page-outs are awaited by the
      // budget loop) Promise.all([]) would resolve at once and starve the replies they wait for.
      const tick = new Promise((r) => setTimeout(r, 10));
      await (this.inflight.size ? Promise.race([Promise.all([...this.inflight]), tick]) : tick);
    }
  }

  /** Stops paging; `drop` deletes the VM's pages on the sub-hosts (the VM is gone for good). */
  async stop(drop: boolean): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    for (const t of this.releaseTimers) clearTimeout(t);
    // A page-out waiting to pause vCPUs that are already gone never finishes: do not wait for it.
    let timer: ReturnType<typeof setTimeout> | undefined;
    await Promise.race([
      Promise.all(this.loops),
      new Promise((r) => timer = setTimeout(r, STOP_WAIT_MS)),
    ]);
    clearTimeout(timer);
    try {
      this.uffd.unregister(this.mem.hostAddr, this.mem.size);
    } catch {
      // Memory already unmapped.
    }
    this.uffd.close();
    if (drop) await Promise.all(this.active().map((l) => l.drop()));
    for (const l of this.links) l.close();
  }
}
