/**
 * Remote paging on the main host of a split VM. Guest memory is registered with userfaultfd
 * (MISSING); a fault asks the page's holder for it, installs it with UFFDIO_COPY and main becomes its
 * holder. Over budget, main pages out the coldest pages (update history from the dirty log and
 * recent faults): it pauses the vCPUs for the copy and the hole punch only, then hands the pages to
 * their home sub-host. Every move goes through PageOwnership, so a page never has two holders or
 * none. A sub-host that fails pauses the VM with the reason; its faults wait until it is back.
 *
 * RemotePager is the façade: it owns the userfaultfd, the holder table and the memory lock, and
 * composes the parts, each in its own module: FaultServer (faults), PageBudget (page-out),
 * SubHosts (the links), SplitMigration (split, gather, move-sub) and the ownership audit.
 */
import { getLogger } from "@logtape/logtape";
import type { OpenCheckpoint } from "../ckpt/open_checkpoint.ts";
import { LazyFill } from "../ckpt/lazy_fill.ts";
import { FEATURE, REGISTER_MODE, Userfaultfd } from "../ffi/uffd.ts";
import type { DirtyTracker } from "../memory/dirty_tracker.ts";
import type { GuestMemory } from "../memory/guest_memory.ts";
import type { Identity } from "../net/identity.ts";
import { budgetPages, PageBudget, type PageOutSaver } from "./budget.ts";
import { FaultServer } from "./fault_server.ts";
import { MainMemory, populate, punchPages } from "./main_memory.ts";
import { auditOwnership, type OwnershipReport } from "./ownership_audit.ts";
import { MAIN, PageOwnership } from "./ownership.ts";
import type { PagerContext, PausableVm } from "./pager_context.ts";
import { planSplit, SplitMigration, type SplitReport } from "./split_migration.ts";
import { stripeHome, SubHosts, type SubHostsOptions } from "./sub_hosts.ts";
import { SubHostDownError, type SubLink } from "./sub_link.ts";
import type { PagingStats } from "../memory/paging_stats.ts";
import { sleep, within } from "../rpc/deadline.ts";

export { presentPages } from "./main_memory.ts";
export type { PageOutSaver } from "./budget.ts";
export type { SplitReport } from "./split_migration.ts";

/** Longest `stop` waits for the fault and budget loops to notice. */
const STOP_WAIT_MS = 2000;
/** How long a sub-host has to answer the check before a checkpoint (QUIC gives up after 3 s). */
const PROBE_MS = 5000;

const log = getLogger(["dcres", "paging"]);

/** How a VM is split. */
export interface SplitSpec {
  /** Most guest memory main keeps resident, in bytes. */
  mainMemBytes: number;
  /** Sub-host agents, HOST:PORT. */
  subs: string[];
}

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

function linkOptions(opts: PagerOptions): SubHostsOptions {
  return {
    vm: opts.name,
    pages: opts.mem.pages,
    pinned: opts.pinnedPages,
    addrs: opts.split.subs,
    identity: opts.identity,
  };
}

function budgetOf(opts: PagerOptions): number {
  return budgetPages(opts.split.mainMemBytes, opts.split.subs.length, opts.pinnedPages);
}

/** 1 for each page of main a lazy restore still installs (the pinned ones are loaded already). */
function pendingOnMain(holder: Uint8Array, pinned: number): Uint8Array {
  const pending = new Uint8Array(holder.length);
  for (let g = pinned; g < holder.length; g++) if (holder[g] === MAIN) pending[g] = 1;
  return pending;
}

/** The main host's pager of one split VM. */
export class RemotePager {
  /** The checkpoint under way, told of every page-out. */
  saver?: PageOutSaver;
  /** The holder table. */
  readonly ownership: PageOwnership;
  readonly #uffd: Userfaultfd;
  readonly #ctx: PagerContext;
  readonly #faults: FaultServer;
  readonly #budget: PageBudget;
  readonly #migration: SplitMigration;
  /** A lazy restore's checkpoint, closed once main's pages are all installed from it. */
  readonly #lazy?: OpenCheckpoint;
  #localDone?: Promise<void>;
  #localError?: Error;
  #memoryLock: Promise<unknown> = Promise.resolve();
  readonly #loops: Promise<void>[] = [];
  #stopped = false;

  private constructor(
    opts: PagerOptions,
    ownership: PageOwnership,
    links: SubHosts,
    budget: number,
    lazy?: { ck: OpenCheckpoint; holder: Uint8Array },
  ) {
    const { mem, pinnedPages: pinned } = opts;
    this.ownership = ownership;
    // Write protection too: a copy-on-write checkpoint protects main's pages in place.
    this.#uffd = Userfaultfd.open(FEATURE.WP_HUGETLBFS_SHMEM);
    this.#lazy = lazy?.ck;
    const local = lazy &&
      new LazyFill(lazy.ck, this.#uffd, mem.hostAddr, pendingOnMain(lazy.holder, pinned));
    this.#ctx = {
      memory: new MainMemory(mem, this.#uffd),
      ownership,
      links,
      zero: new Uint8Array(mem.pages),
      vm: opts.vm,
      tracker: opts.tracker,
      pinned,
      local,
      stopped: () => this.#stopped,
      withMemory: (fn) => this.withMemory(fn),
    };
    this.#faults = new FaultServer(this.#ctx, this.#uffd);
    this.#budget = new PageBudget(this.#ctx, this.#faults, budget, () => this.saver);
    this.#migration = new SplitMigration(this.#ctx, this.#faults);
  }

  /**
   * Splits a VM that has not run yet: pages below `pinnedPages` (what the VMM itself reads) stay on
   * main, the rest are striped over the sub-hosts as zero pages; then faults are served and the
   * budget kept.
   */
  static async start(opts: PagerOptions): Promise<RemotePager> {
    const { mem } = opts;
    const pinned = opts.pinnedPages, subs = opts.split.subs.length;
    const budget = budgetOf(opts);
    const own = new PageOwnership(
      mem.pages,
      subs + 1,
      (g) => g < pinned ? MAIN : stripeHome(g, pinned, subs),
    );
    populate(mem, pinned);
    punchPages(mem, pinned, mem.pages - pinned);
    const links = await SubHosts.open(linkOptions(opts), (g) => own.holderOf(g));
    const pager = new RemotePager(opts, own, links, budget);
    pager.#ctx.zero.fill(1, pinned);
    pager.#run("started");
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
    const links = await SubHosts.reopen(linkOptions(opts), own.counts());
    const pager = new RemotePager(opts, own, links, budget, lazy && { ck: lazy, holder });
    pager.#run("restored");
    return pager;
  }

  /**
   * Splits a running VM, pre-copy style and without paging: the hottest pages (recently written)
   * stay on main up to its budget; the others are copied to their sub-hosts while the guest runs,
   * in rounds that resend what it wrote meanwhile; a short pause sends the last dirty ones, drops
   * the departed pages from main and arms userfaultfd. No fault is served remotely before that.
   */
  static async migrate(opts: PagerOptions): Promise<{ pager: RemotePager; report: SplitReport }> {
    const { mem } = opts;
    const t0 = performance.now();
    const pinned = opts.pinnedPages, subs = opts.split.subs.length;
    const budget = budgetOf(opts);
    populate(mem, pinned);
    const plan = planSplit(mem, opts.tracker, pinned, subs, budget);
    const links = await SubHosts.open(linkOptions(opts), plan.holder);
    const own = new PageOwnership(mem.pages, subs + 1, () => MAIN);
    const pager = new RemotePager(opts, own, links, budget);
    try {
      const report = await pager.#migration.precopy(plan, t0, () => pager.#run("migrated"));
      return { pager, report };
    } catch (e) {
      await pager.stop(true);
      throw e;
    }
  }

  /**
   * Runs `fn` while no move can begin (page-outs and moves across begin under it): a checkpoint
   * reads main's pages from memory, and takes its consistency point, under it.
   */
  withMemory<T>(fn: () => Promise<T> | T): Promise<T> {
    const p = this.#memoryLock.then(fn);
    // The lock only orders the moves; `p`'s own caller sees its failure.
    this.#memoryLock = p.catch(() => {});
    return p;
  }

  /** Resolves once a lazy restore's pages of main are all installed (undefined: none pending). */
  get localDone(): Promise<void> | undefined {
    return this.#localDone;
  }

  /** Why the lazy restore's pass over main's pages failed, once it has (a page it could not read). */
  get localError(): Error | undefined {
    return this.#localError;
  }

  /** The guest memory the pager serves. */
  get memory(): GuestMemory {
    return this.#ctx.memory.guest;
  }

  /**
   * A copy-on-write checkpoint's hook: the guest is about to write `gfn`, which main protected;
   * it keeps the old contents first.
   */
  get onWriteProtected(): ((gfn: number) => void) | undefined {
    return this.#ctx.memory.onWriteProtected;
  }

  set onWriteProtected(fn: ((gfn: number) => void) | undefined) {
    this.#ctx.memory.onWriteProtected = fn;
  }

  /** Sub-hosts in service, with their index in the ownership table. */
  subLinks(): SubLink[] {
    return this.#ctx.links.active();
  }

  /**
   * Reconnects the sub-hosts whose links are down (nothing may have asked them for a page since
   * they came back, or the link does not know yet: each is asked once) and waits up to `timeoutMs`
   * for them; throws naming those still unreachable.
   */
  async ensureLinks(timeoutMs = 10_000): Promise<void> {
    const links = this.#ctx.links;
    const deadline = performance.now() + timeoutMs;
    // A link that looks up may be to an agent that was restarted: asked once, it says.
    await Promise.all(links.active().map((l) => l.probe(PROBE_MS)));
    for (const l of links.active()) if (l.down) void this.#faults.reconnect(l.index);
    while (links.active().some((l) => l.down) && performance.now() < deadline) {
      await sleep(100);
    }
    const down = links.active().filter((l) => l.down);
    if (down.length) {
      throw new SubHostDownError(
        down.map((l) => `${l.host} (${l.addr})`).join(", "),
        `${down[0].down}; its pages cannot be saved until it is back`,
      );
    }
  }

  /** Sets or clears (waking writers) write protection of main's pages in `runs` [gfn, count]. */
  protect(runs: Array<[number, number]>, on: boolean): void {
    this.#ctx.memory.protect(runs, on);
  }

  /**
   * Brings every page to main and keeps it there until `releaseMain` (the traditional checkpoint of
   * a split VM: it then reads all of guest memory from this thread, which must never fault).
   */
  async pullToMain(): Promise<void> {
    this.#budget.holdAll();
    await this.#migration.pullAll();
  }

  /** Ends `pullToMain`: the budget applies again and the coldest pages leave. */
  releaseMain(): void {
    this.#budget.release();
  }

  /**
   * Brings every page back to main while the guest runs (faults are still served), then stops
   * paging and deletes the pages on the sub-hosts: the VM is a one-host VM again.
   */
  async gather(): Promise<{ ms: number; pagesIn: number }> {
    const t0 = performance.now(), before = this.#faults.counts.pageIns;
    this.#budget.holdAll();
    try {
      await this.#migration.pullAll();
    } catch (e) {
      this.#budget.release();
      throw e;
    }
    await this.stop(true);
    return { ms: performance.now() - t0, pagesIn: this.#faults.counts.pageIns - before };
  }

  /**
   * Moves every page sub-host `from` holds to `to` (a host new to this VM) while the guest runs;
   * see SplitMigration.moveSub.
   */
  moveSub(from: string, to: string): Promise<{ ms: number; pages: number }> {
    return this.#migration.moveSub(from, to);
  }

  /** Counters and placement. */
  stats(): PagingStats {
    const counts = this.ownership.counts();
    const residentPages: Record<string, number> = { main: counts[MAIN] };
    for (const l of this.#ctx.links.active()) residentPages[l.host] = counts[l.index];
    const faults = this.#faults.counts, budget = this.#budget.counts;
    const blocked = this.#faults.blocked;
    return {
      pageIns: faults.pageIns,
      pageOuts: budget.pageOuts,
      faults: faults.faults,
      zeroFills: faults.zeroFills,
      pageOutPauseMs: Math.round(budget.pageOutPauseMs),
      residentPages,
      faultLatencyUs: this.#faults.latencyUs(),
      mainBudgetPages: this.#budget.pages,
      ...(blocked ? { blocked } : {}),
    };
  }

  /** Why paging holds the VM paused, if it does. */
  get blocked(): string | undefined {
    return this.#faults.blocked;
  }

  /**
   * Pauses the VM, lets every move finish, and checks that each page has exactly one holder: the
   * ownership table, main's present pages and every sub-host's held bitmap must agree.
   */
  check(): Promise<OwnershipReport> {
    return auditOwnership(this.#ctx, () => this.drain(30_000, true));
  }

  /**
   * With the vCPUs paused: lets the moves under way (page-ins, page-outs, releases sent) finish, so
   * the ownership table, main's memory and the sub-hosts' stores agree; with `acknowledged`, also
   * every release owed, bringing back the links they wait for.
   */
  async drain(timeoutMs = 30_000, acknowledged = false): Promise<void> {
    const links = this.#ctx.links;
    const deadline = performance.now() + timeoutMs;
    // A release whose link failed is sent again only once the link is back, which nothing else may
    // bring about (no fault or page-out needs that sub-host). Not waited for, it made the audit
    // report the sub-host holding pages main held, though the release was only late.
    const owed = () => {
      let any = false;
      for (const l of links.active()) {
        if (!l.releases.unacknowledged) continue;
        any = true;
        if (l.down) void this.#faults.reconnect(l.index);
      }
      return any;
    };
    const busy = () => {
      links.flushReleases();
      return links.inFlight > 0 || this.ownership.check().moving > 0 || (acknowledged && owed());
    };
    while (busy() && performance.now() < deadline) {
      // A timer, not only the moves in flight: with none tracked (page-outs are awaited by the
      // budget loop) Promise.all([]) would resolve at once and starve the replies they wait for.
      const tick = sleep(10);
      await (links.inFlight ? Promise.race([links.settled(), tick]) : tick);
    }
  }

  /** Stops paging; `drop` deletes the VM's pages on the sub-hosts (the VM is gone for good). */
  async stop(drop: boolean): Promise<void> {
    if (this.#stopped) return;
    this.#stopped = true;
    const links = this.#ctx.links;
    links.stop();
    // A page-out waiting to pause vCPUs that are already gone never finishes: do not wait for it.
    await within(Promise.all(this.#loops), STOP_WAIT_MS);
    const mem = this.#ctx.memory.guest;
    this.#uffd.teardown(mem.hostAddr, mem.size);
    this.#ctx.memory.close();
    if (drop) await links.drop();
    links.close();
  }

  /** Arms userfaultfd and starts serving faults and keeping the budget. */
  #run(what: string) {
    const mem = this.#ctx.memory.guest;
    this.#uffd.register(mem.hostAddr, mem.size, REGISTER_MODE.MISSING | REGISTER_MODE.WP);
    this.#loops.push(this.#faults.loop(), this.#budget.loop());
    const local = this.#ctx.local;
    if (local) {
      const fill = this.#fillLocal(local);
      this.#loops.push(fill);
      // A failed pass is `stop`'s to report (it waits for the loops); the restore is over either way.
      this.#localDone = fill.catch((e) => {
        this.#localError = e as Error;
      });
    }
    log.info("split {what}: {pages} pages, main budget {budget}, sub-hosts {subs}", {
      what,
      pages: mem.pages,
      budget: this.#budget.pages,
      subs: this.#ctx.links.all.map((l) => l.host),
    });
  }

  /** Installs the rest of a lazy restore's pages of main, most recently used first. */
  async #fillLocal(local: LazyFill) {
    try {
      await local.run({ stopped: () => this.#stopped });
    } finally {
      this.#lazy!.close();
    }
  }
}
