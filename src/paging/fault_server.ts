/**
 * Serving a split VM's guest faults on its main host. Each fault is routed: it waits for a page on
 * its way out, is zero-filled, is installed from a lazy restore's checkpoint, or is fetched from
 * the page's holder on that sub-host's urgent channel (with read-ahead on its bulk channel) and
 * installed with UFFDIO_COPY; main becomes the holder and releases the sub-host's copy. A sub-host
 * that cannot serve pauses the VM with the reason; its faults wait until it is back.
 */
import { getLogger } from "@logtape/logtape";
import * as libc from "../ffi/libc.ts";
import { PAGEFAULT_FLAG, type Userfaultfd } from "../ffi/uffd.ts";
import { batches } from "./batches.ts";
import { MAIN } from "./ownership.ts";
import type { PagerContext } from "./pager_context.ts";
import { SubHostDownError } from "./sub_link.ts";
import { PageOp } from "./wire.ts";
import { PAGE_SIZE } from "../accel/accel.ts";

/** Pages fetched after a fault that continues a sequential run. */
const READ_AHEAD = 127;
/** Fault service times kept for the percentiles. */
const LATENCY_SAMPLES = 8192;
/** Faults remembered to tell a sequential run. */
const RECENT = 256;

const log = getLogger(["dcres", "paging"]);

/** A vCPU waiting on page `g` since `t` (ms). */
export interface Fault {
  g: number;
  t: number;
}

/** Faults to fetch, by sub-host. */
type FetchList = Map<number, Fault[]>;

/** The fault service of one split VM. */
export class FaultServer {
  /** Pages brought to main, guest faults, and faults filled with zeros without a round trip. */
  readonly counts = { pageIns: 0, faults: 0, zeroFills: 0 };
  /** The dirty-log epoch of each page's last fault: with the dirty log, how hot it is. */
  readonly lastTouch: Uint32Array;
  readonly #ctx: PagerContext;
  readonly #uffd: Userfaultfd;
  readonly #recent = new Set<number>();
  readonly #faultedWhileIn = new Set<number>();
  readonly #settleWaiters = new Map<number, Array<() => void>>();
  readonly #waitingFor = new Map<number, Set<number>>();
  readonly #latencies = new Float64Array(LATENCY_SAMPLES);
  #latencyCount = 0;
  #blocked?: string;

  /** Serves the faults `uffd` reports on `ctx`'s memory (once `loop` runs). */
  constructor(ctx: PagerContext, uffd: Userfaultfd) {
    this.#ctx = ctx;
    this.#uffd = uffd;
    this.lastTouch = new Uint32Array(ctx.memory.guest.pages);
  }

  /** Why paging holds the VM paused (a sub-host is unreachable), when it does. */
  get blocked(): string | undefined {
    return this.#blocked;
  }

  /** Fault service time (fault read to page installed) over the last faults, µs. */
  latencyUs(): { p50: number; p99: number } {
    const n = Math.min(this.#latencyCount, LATENCY_SAMPLES);
    const lat = this.#latencies.slice(0, n).sort();
    const pct = (p: number) => n ? Math.round(lat[Math.min(n - 1, Math.floor(n * p / 100))]) : 0;
    return { p50: pct(50), p99: pct(99) };
  }

  /** Reads and serves faults until paging stops. */
  async loop(): Promise<void> {
    const mem = this.#ctx.memory.guest;
    const toFetch: FetchList = new Map();
    while (!this.#ctx.stopped()) {
      const [rev] = await libc.pollAsync([{ fd: this.#uffd.fd, events: libc.POLL.IN }], 100);
      if (this.#ctx.stopped()) break;
      if (!(rev & libc.POLL.IN)) continue;
      const t = performance.now();
      for (let evs = this.#uffd.readEvents(); evs.length; evs = this.#uffd.readEvents()) {
        for (const ev of evs) {
          const g = Number((ev.address - mem.hostAddr) / BigInt(PAGE_SIZE));
          if (g < 0 || g >= mem.pages) continue;
          if (ev.flags & PAGEFAULT_FLAG.WP) {
            this.#ctx.memory.writeFault(g);
            continue;
          }
          this.counts.faults++;
          this.#route(g, t, toFetch);
        }
      }
      this.#fetchAll(toFetch);
      toFetch.clear();
    }
  }

  /** Routes faults on `gfns` (read at `t`) again and fetches what they need. */
  #reroute(gfns: Iterable<number>, t: number) {
    const toFetch: FetchList = new Map();
    for (const g of gfns) this.#route(g, t, toFetch);
    this.#fetchAll(toFetch);
  }

  #fetchAll(toFetch: FetchList) {
    for (const [host, faults] of toFetch) this.#pageIn(host, faults);
  }

  /** Decides how fault `g` is served: wait for a page-out, zero-fill, or fetch from its holder. */
  #route(g: number, t: number, toFetch: FetchList) {
    const { ownership: own, memory, local } = this.#ctx;
    this.lastTouch[g] = this.#ctx.tracker.currentEpoch;
    if (own.isLeaving(g)) {
      const w = this.#settleWaiters.get(g) ?? [];
      w.push(() => this.#reroute([g], t));
      this.#settleWaiters.set(g, w);
      return;
    }
    if (own.isMoving(g)) {
      // Being paged in: its UFFDIO_COPY wakes this fault too, unless that page-in fails.
      this.#faultedWhileIn.add(g);
      return;
    }
    const holder = own.holderOf(g);
    if (holder === MAIN) {
      if (local?.isPending(g)) local.install([g]);
      // Main's and not present: never written since main took it, so it is a zero page.
      else memory.zeroIn([g]);
      return;
    }
    if (this.#ctx.zero[g]) {
      own.beginIn(g);
      memory.zeroIn([g]);
      own.endIn(g);
      this.#ctx.zero[g] = 0;
      this.counts.zeroFills++;
      this.#ctx.links.link(holder).releases.queue([g]);
      return;
    }
    const list = toFetch.get(holder) ?? [];
    list.push({ g, t });
    toFetch.set(holder, list);
  }

  /**
   * Fetches faulted pages from sub-host `host` on its urgent channel and, after a fault that
   * continues a sequential run, the pages that follow it on the bulk channel.
   */
  #pageIn(host: number, faults: Fault[]) {
    const { ownership: own, zero, links } = this.#ctx;
    const pages = this.#ctx.memory.guest.pages;
    const idle = (g: number) => own.holderOf(g) === host && !own.isMoving(g);
    const urgent = [...new Set(faults.map((f) => f.g))].filter(idle).sort((a, b) => a - b);
    const ahead = new Set<number>();
    for (const { g } of faults) {
      if (this.#recent.has(g - 1)) {
        for (let n = g + 1; n <= g + READ_AHEAD && n < pages && idle(n) && !zero[n]; n++) {
          ahead.add(n);
        }
      }
      this.#recent.add(g);
      if (this.#recent.size > RECENT) this.#recent.delete(this.#recent.values().next().value!);
    }
    for (const g of urgent) ahead.delete(g);
    for (const b of batches(urgent)) links.track(this.fetch(host, b, faults, true));
    for (const b of batches([...ahead].sort((a, b) => a - b))) {
      links.track(this.fetch(host, b, [], false));
    }
  }

  /**
   * Brings `gfns` from sub-host `host` to main (those still idle there), on the urgent channel when
   * vCPUs wait (`faults`); a sub-host that fails is reconnected, and holds the VM paused while a
   * vCPU waits on it.
   */
  async fetch(host: number, gfns: number[], faults: Fault[], urgent: boolean): Promise<void> {
    const { ownership: own, links } = this.#ctx;
    const link = links.link(host);
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
        if (this.#faultedWhileIn.delete(g)) waiting.add(g);
      }
      this.#block(
        host,
        [...waiting],
        e instanceof SubHostDownError ? e.reason : (e as Error).message,
      );
      return;
    }
    for (const g of gfns) this.#faultedWhileIn.delete(g);
    this.#ctx.memory.copyIn(gfns, data);
    for (const g of gfns) {
      own.endIn(g);
      this.#ctx.zero[g] = 0;
    }
    this.counts.pageIns += gfns.length;
    const now = performance.now();
    const got = new Set(gfns);
    for (const f of faults) {
      if (got.has(f.g)) {
        this.#latencies[this.#latencyCount++ % LATENCY_SAMPLES] = (now - f.t) * 1000;
      }
    }
    link.releases.queue(gfns);
  }

  /** Faults that waited for `gfns` to finish leaving main or a sub-host are routed again. */
  settle(gfns: number[]): void {
    for (const g of gfns) {
      const w = this.#settleWaiters.get(g);
      if (!w) continue;
      this.#settleWaiters.delete(g);
      for (const f of w) f();
    }
  }

  /** Reconnects sub-host `host` in the background; then the faults waiting on it are served. */
  reconnect(host: number): Promise<void> {
    return this.#ctx.links.link(host).reconnect(() => this.#ctx.stopped(), () => this.#back(host));
  }

  /**
   * Pages of `host` cannot be fetched now: its link is failed and reconnected in the background;
   * when vCPUs wait on some of them (`faults`), the VM is paused with the reason until it is back.
   */
  #block(host: number, faults: number[], reason: string) {
    const set = this.#waitingFor.get(host) ?? new Set<number>();
    for (const g of faults) set.add(g);
    if (set.size) this.#waitingFor.set(host, set);
    const l = this.#ctx.links.link(host);
    if (set.size && !this.#blocked && !this.#ctx.stopped()) {
      this.#blocked = `paused: sub-host ${l.host} (${l.addr}) cannot serve its pages ` +
        `(${reason}); the VM resumes when it is back`;
      log.error("{reason}", { reason: this.#blocked });
      // A vCPU held in a fault on the missing page parks only once that page comes: the pause
      // stays requested, so its timing out is no failure of the VM.
      this.#ctx.vm.pause().catch((e) =>
        log.warn("a vCPU waits on a page of {host} before it parks: {error}", {
          host: l.host,
          error: (e as Error).message,
        })
      );
    }
    l.fail(reason);
    void this.reconnect(host);
  }

  /** Sub-host `host` is back: the faults that waited on it are served, and the VM resumes. */
  #back(host: number) {
    const faults = [...(this.#waitingFor.get(host) ?? [])];
    this.#waitingFor.delete(host);
    this.#reroute(faults, performance.now());
    if (this.#waitingFor.size === 0 && this.#blocked) {
      log.info("resuming: {was}", { was: this.#blocked });
      this.#blocked = undefined;
      this.#ctx.vm.resume();
    }
  }
}
