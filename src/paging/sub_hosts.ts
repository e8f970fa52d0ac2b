/**
 * The sub-hosts of one split VM, as its main host reaches them: a link to each, by its index in the
 * ownership table; where a page goes by default (stripes over the sub-hosts, then whichever host
 * replaced its first home); and the requests to them that nobody awaits, so a drain can wait.
 */
import type { Identity } from "../net/identity.ts";
import { MAIN } from "./ownership.ts";
import { gfnRuns } from "../memory/runs.ts";
import { SubLink } from "./sub_link.ts";

/** Pages per stripe when spreading a new VM's memory over the sub-hosts. */
const STRIPE = 512;

/** The sub-host (1..subs) a page lives on by default: stripes of STRIPE pages, round robin. */
export function stripeHome(g: number, pinned: number, subs: number): number {
  return 1 + (Math.floor((g - pinned) / STRIPE) % subs);
}

/** What reaching a VM's sub-hosts needs. */
export interface SubHostsOptions {
  /** VM name (names its page stores). */
  vm: string;
  /** Guest memory size in pages. */
  pages: number;
  /** Low pages that never leave main. */
  pinned: number;
  /** Sub-host agents, HOST:PORT, in the order of their index. */
  addrs: string[];
  /** Identity to reach them with. */
  identity: Identity;
}

/** A split VM's links to its sub-hosts. */
export class SubHosts {
  readonly #links: SubLink[];
  /** Sub-host index → the index of the host that replaced it. */
  readonly #replaced = new Map<number, number>();
  readonly #stripes: number;
  readonly #opts: SubHostsOptions;
  readonly #inflight = new Set<Promise<unknown>>();

  private constructor(opts: SubHostsOptions) {
    this.#opts = opts;
    this.#links = opts.addrs.map((addr, i) => this.#link(i + 1, addr));
    this.#stripes = this.#links.length;
  }

  /** Connects every sub-host, starting its store afresh with the pages `holder` gives it. */
  static async open(opts: SubHostsOptions, holder: (g: number) => number): Promise<SubHosts> {
    const subs = new SubHosts(opts);
    const held: number[][] = subs.#links.map(() => []);
    for (let g = opts.pinned; g < opts.pages; g++) {
      const h = holder(g);
      if (h !== MAIN) held[h - 1].push(g);
    }
    await Promise.all(subs.#links.map(async (l, k) => {
      try {
        await l.connect(gfnRuns(held[k]));
      } catch (e) {
        throw new Error(`sub-host ${l.addr}: ${(e as Error).message}`);
      }
    })).catch(async (e) => {
      await subs.drop();
      subs.close();
      throw e;
    });
    return subs;
  }

  /**
   * Connects every sub-host of a restore, whose store already holds its pages, and checks that it
   * holds as many as `counts` (by host index) says.
   */
  static async reopen(opts: SubHostsOptions, counts: number[]): Promise<SubHosts> {
    const subs = new SubHosts(opts);
    try {
      await Promise.all(subs.#links.map(async (l) => {
        const held = await l.connect().catch((e) => {
          throw new Error(`sub-host ${l.addr}: ${(e as Error).message}`);
        });
        if (held !== counts[l.index]) {
          throw new Error(
            `sub-host ${l.host} holds ${held} pages of ${opts.vm}, the restore gave it ${
              counts[l.index]
            }`,
          );
        }
      }));
    } catch (e) {
      subs.close();
      throw e;
    }
    return subs;
  }

  /** The link of sub-host `host` (its index in the ownership table). */
  link(host: number): SubLink {
    return this.#links[host - 1];
  }

  /** Every link, replaced ones too. */
  get all(): readonly SubLink[] {
    return this.#links;
  }

  /** Sub-hosts in service (not replaced). */
  active(): SubLink[] {
    return this.#links.filter((l) => !l.retired);
  }

  /** The sub-host page `g` goes to by default, after any replacement of its original home. */
  homeOf(g: number): number {
    let h = stripeHome(g, this.#opts.pinned, this.#stripes);
    for (let r = this.#replaced.get(h); r !== undefined; r = this.#replaced.get(h)) h = r;
    return h;
  }

  /** The sub-host page `g` goes to: its home when that link is up, else any that is (0: none). */
  destination(g: number): number {
    const home = this.homeOf(g) - 1;
    for (let k = 0; k < this.#links.length; k++) {
      const l = this.#links[(home + k) % this.#links.length];
      if (!l.down && !l.draining && !l.retired) return l.index;
    }
    return 0;
  }

  /** Connects `addr`, a host new to this VM, with an empty store; it is not in service yet. */
  async connectNew(addr: string): Promise<SubLink> {
    const link = this.#link(this.#links.length + 1, addr);
    try {
      await link.connect([]);
    } catch (e) {
      throw new Error(`${addr}: ${(e as Error).message}`);
    }
    return link;
  }

  /** `by` (from `connectNew`) takes over from `old`: it gets `old`'s new pages, `old` none. */
  replace(old: SubLink, by: SubLink): void {
    this.#links.push(by);
    this.#replaced.set(old.index, by.index);
    old.draining = true;
  }

  /** Counts `p`, a request to a sub-host nobody awaits, as in flight until it settles. */
  track(p: Promise<unknown>): void {
    this.#inflight.add(p);
    void p.finally(() => this.#inflight.delete(p));
  }

  /** Requests in flight that nobody awaits. */
  get inFlight(): number {
    return this.#inflight.size;
  }

  /** Resolves once the requests in flight now have settled. */
  settled(): Promise<unknown> {
    return Promise.all([...this.#inflight]);
  }

  /** Sends every queued release now. */
  flushReleases(): void {
    for (const l of this.active()) l.releases.flush();
  }

  /** Stops the release timers (paging stops). */
  stop(): void {
    for (const l of this.#links) l.releases.stop();
  }

  /** Deletes the VM's pages on the sub-hosts in service (the VM is gone). */
  async drop(): Promise<void> {
    await Promise.all(this.active().map((l) => l.drop()));
  }

  /** Closes every link. */
  close(): void {
    for (const l of this.#links) l.close();
  }

  #link(index: number, addr: string): SubLink {
    const o = this.#opts;
    return new SubLink(index, addr, o.identity, o.vm, o.pages, (p) => this.track(p));
  }
}
