/**
 * The split checkpoint simulation (docs/CONSISTENCY.md): one seed builds a split VM of a few pages
 * over one to three sub-hosts and runs a chain of 3 to 6 checkpoints of one mode through the real
 * driver (`saveSplitPages` and `SplitCheckpoint`), the real ledger, SubSaver and ownership table,
 * while the guest writes, the pager pages in, out and across, hosts are added, incrementals are
 * merged, and (with failures on) messages, moves and disk writes fail. Every committed checkpoint
 * is restored from its page map and compared page by page with the memory at its consistency point,
 * and what was saved is checked too; a checkpoint that fails must leave the last committed one to
 * build on.
 */
import type { CheckpointMode } from "../../src/ckpt/manifest.ts";
import { expandPageMap } from "../../src/ckpt/page_map.ts";
import { MAIN } from "../../src/paging/ownership.ts";
import { saveSplitPages, type SplitSaveResult } from "../../src/paging/split_save.ts";
import { SplitCheckpoint } from "../../src/paging/split_session.ts";
import {
  Scheduler,
  type Scheduler as Sched,
  settle,
  SimFailure,
  SimFault,
} from "./sim_scheduler.ts";
import { SimCluster } from "./split_sim_hosts.ts";
import { SimFragment } from "./split_sim_store.ts";

/** What one or more simulated runs did. */
export interface SimCounts {
  seeds: number;
  /** Scheduling decisions: events fired and guest or pager actions taken. */
  steps: number;
  pages: number;
  generations: number;
  committed: number;
  aborted: number;
  merges: number;
  hostsAdded: number;
  pageIns: number;
  pageOuts: number;
  across: number;
  failedMoves: number;
  faults: number;
  writes: number;
}

/** Counts with nothing in them. */
export function noCounts(): SimCounts {
  return {
    seeds: 0,
    steps: 0,
    pages: 0,
    generations: 0,
    committed: 0,
    aborted: 0,
    merges: 0,
    hostsAdded: 0,
    pageIns: 0,
    pageOuts: 0,
    across: 0,
    failedMoves: 0,
    faults: 0,
    writes: 0,
  };
}

/** Adds `b` into `a`. */
export function addCounts(a: SimCounts, b: SimCounts): void {
  for (const k of Object.keys(a) as (keyof SimCounts)[]) a[k] += b[k];
}

/** A committed checkpoint the next incremental builds on. */
interface Committed {
  /** Fragment of each page's copy. */
  copy: Int32Array;
  /** Guest write version at its consistency point. */
  version: number;
  /** Generations since the last full or merged one. */
  chain: number;
}

/** The memory at a consistency point. */
interface Point {
  truth: Int32Array;
  lastWrite: Int32Array;
  version: number;
  /** Records each new fragment had by then, by gfn. */
  appends: Map<number, number>[];
}

const STEP_LIMIT = 50_000;

/** One seed's run. */
class SimRun {
  readonly sched: Sched;
  readonly cl: SimCluster;
  readonly frags: SimFragment[] = [];
  readonly counts = noCounts();
  #hot: number[];
  /** Pages moved between sub-hosts during the current pause. */
  #movedPaused = new Set<number>();
  /** Cumulative shares of write, page-in, page-out, move across and sample among actions. */
  #mix: number[];
  #committed?: Committed;

  constructor(
    readonly seed: number,
    readonly mode: CheckpointMode,
    failures: boolean,
    opts: SimOptions,
  ) {
    this.sched = new Scheduler(seed, opts.traceLimit, opts.log);
    const rng = this.sched.rng;
    const pages = 6 + rng.int(27);
    this.cl = new SimCluster({
      pages,
      subs: 1 + rng.int(3),
      batch: 1 + rng.int(4),
      skew: rng.chance(0.2),
    }, this.sched);
    // Each seed its own mix of what the guest and the pager do, so some runs page out hard,
    // some move pages between sub-hosts all the time, some mostly write.
    const w = [0.2 + rng.next(), rng.next(), rng.next(), rng.next(), rng.next() * 0.2];
    const sum = w.reduce((a, b) => a + b, 0);
    let acc = 0;
    this.#mix = w.map((x) => acc += x / sum);
    this.sched.failRate = failures ? 0.002 + rng.next() * 0.02 : 0;
    this.#hot = [rng.int(pages), rng.int(pages), rng.int(pages)];
    this.counts.pages = pages;
  }

  /** One step: an event fires, or the guest or the pager does something. */
  #act(): void {
    const { rng } = this.sched, cl = this.cl, own = cl.own, P = cl.cfg.pages;
    this.counts.steps++;
    if (rng.chance(0.55) && this.sched.fire()) return;
    // One action in five does nothing: events fire then, and moves finish.
    if (rng.chance(0.2)) return;
    const r = rng.next(), [wr, pin, pout, acr] = this.#mix;
    const idleOn = (h: (x: number) => boolean) => {
      const out: number[] = [];
      for (let g = 0; g < P; g++) if (h(own.holderOf(g)) && !own.isMoving(g)) out.push(g);
      return out;
    };
    if (r < wr) {
      cl.write(rng.chance(0.6) ? rng.pick(this.#hot) : rng.int(P));
    } else if (r < pin) {
      // Page-ins follow faults (read-ahead included): none while the vCPUs are paused.
      if (cl.paused) return;
      const c = idleOn((h) => h !== MAIN);
      if (!c.length) return;
      const g = rng.pick(c), h = own.holderOf(g);
      const run = [g];
      for (let n = g + 1; n < P && run.length < 1 + rng.int(3); n++) {
        if (own.holderOf(n) !== h || own.isMoving(n)) break;
        run.push(n);
      }
      void cl.pageIn(run);
    } else if (r < pout) {
      const c = idleOn((h) => h === MAIN);
      if (!c.length) return;
      const pick = Array.from({ length: 1 + rng.int(3) }, () => rng.pick(c));
      void cl.pageOut([...new Set(pick)], 1 + rng.int(own.hosts - 1));
    } else if (r < acr) {
      if (own.hosts <= 2) return;
      // While the vCPUs are paused pages move between sub-hosts only as a replacement moves them:
      // each once (bouncing forever, a page would never stand still to be saved).
      const c = idleOn((h) => h !== MAIN).filter((g) => !cl.paused || !this.#movedPaused.has(g));
      if (!c.length) return;
      const g = rng.pick(c), from = own.holderOf(g);
      if (cl.paused) this.#movedPaused.add(g);
      const to = 1 + (from + rng.int(own.hosts - 2)) % (own.hosts - 1);
      void cl.across(g, to);
    } else {
      cl.tracker.sample();
    }
  }

  /** Acts until `p` settles; fails if the run gets stuck or does not finish. */
  async #until<T>(p: Promise<T>): Promise<T> {
    let done = false;
    p.then(() => done = true, () => done = true);
    let idle = 0;
    for (let i = 0; !done; i++) {
      if (i > STEP_LIMIT) throw this.sched.failure(`not finished after ${STEP_LIMIT} steps`);
      this.#act();
      await settle();
      if (this.cl.lateError) throw this.sched.failure(`a late request: ${this.cl.lateError}`);
      idle = this.sched.pending || this.cl.moves || !this.cl.paused ? 0 : idle + 1;
      if (idle > 200) throw this.sched.failure("stuck: paused, nothing under way, not finished");
    }
    return await p;
  }

  /** `n` steps with no checkpoint under way. */
  async #run(n: number): Promise<void> {
    for (let i = 0; i < n; i++) {
      this.#act();
      await settle();
    }
  }

  async #checkpoint(incremental: boolean): Promise<void> {
    const cl = this.cl, sched = this.sched, own = cl.own;
    const parent = incremental ? this.#committed : undefined;
    const subs = Array.from({ length: own.hosts - 1 }, (_, k) => k + 1);
    const base = this.frags.length;
    const fragmentOf = new Array(own.hosts).fill(-1);
    for (let h = 0; h < own.hosts; h++) {
      fragmentOf[h] = this.frags.length;
      this.frags.push(new SimFragment(h, sched, `fragment ${this.frags.length} (host ${h})`));
    }
    this.counts.generations++;
    const id = `checkpoint ${this.counts.generations}`;
    sched.note(`${this.mode} checkpoint, ${parent ? "incremental" : "full"}, fragments ${base}+`);
    let point: Point | undefined;
    let saved: SplitSaveResult | undefined;
    let c: SplitCheckpoint | undefined;
    const rng = sched.rng;
    const take = async () => {
      const begins = await Promise.allSettled(
        subs.map((s) => cl.beginSub(s, this.frags[fragmentOf[s]], id)),
      );
      for (const b of begins) if (b.status === "rejected") throw b.reason;
      c = new SplitCheckpoint(
        cl.io(this.frags[base], subs, id),
        fragmentOf,
        parent?.copy,
        cl.cfg.batch,
      );
      cl.saver = c;
      try {
        saved = await saveSplitPages(c, {
          mode: this.mode,
          maxDowntimeMs: rng.int(40),
          tracker: cl.tracker,
          pause: async () => {
            await sched.wait("vCPUs pause");
            cl.paused = true;
          },
          resume: () => {
            cl.paused = false;
            this.#movedPaused.clear();
          },
          drain: async () => {
            while (cl.moves > 0) await sched.wait("drain waits");
          },
          atPoint: () =>
            point = {
              truth: cl.logical.slice(),
              lastWrite: cl.lastWrite.slice(),
              version: cl.version,
              appends: this.frags.slice(base).map((f) => new Map(f.appends)),
            },
          wait: () => sched.wait("a round waits for pages on the move"),
          now: () => sched.clock,
        });
      } finally {
        cl.saver = undefined;
      }
      const finished = await Promise.allSettled([
        this.frags[base].finish(),
        ...subs.map((s) => cl.finishSub(s, id)),
      ]);
      for (const f of finished) if (f.status === "rejected") throw f.reason;
    };
    const aborted = async (e: unknown) => {
      await Promise.all(subs.map((s) => cl.abortSub(s, id)));
      throw e;
    };
    try {
      await this.#until(take().catch(aborted));
    } catch (e) {
      if (e instanceof SimFailure) throw e;
      if (!(e instanceof SimFault)) {
        throw sched.failure(`the checkpoint failed: ${(e as Error).stack}`);
      }
      // Aborted: the generation goes, its dirty bits go back (the driver gave back its own).
      if (saved) cl.tracker.abort(saved.txn);
      cl.paused = false;
      this.#movedPaused.clear();
      this.frags.length = base;
      this.counts.aborted++;
      sched.note(`checkpoint aborted: ${e.message}`);
      return;
    }
    for (const s of subs) cl.endSub(s, id);
    cl.tracker.commit(saved!.txn);
    const copy = Int32Array.from(expandPageMap(saved!.pageMap, cl.cfg.pages));
    this.#verify(copy, point!, base, parent, c!);
    this.#committed = {
      copy,
      version: point!.version,
      chain: parent ? parent.chain + 1 : 1,
    };
    this.counts.committed++;
  }

  /** The checkpoint restores the memory at its point; what it saved is what it had to. */
  #verify(
    copy: Int32Array,
    pt: Point,
    base: number,
    parent: Committed | undefined,
    c: SplitCheckpoint,
  ) {
    const what = `${this.mode} generation ${this.counts.generations}`;
    const fail = (m: string) => {
      throw this.sched.failure(`${what}: ${m}`);
    };
    for (let g = 0; g < copy.length; g++) {
      const f = this.frags[copy[g]], v = f?.get(g);
      if (v !== pt.truth[g]) {
        fail(
          `page ${g} restored from fragment ${copy[g]} is ${v}, at the point it was ${pt.truth[g]}`,
        );
      }
      const clean = parent && pt.lastWrite[g] <= parent.version;
      const ours = this.frags.slice(base);
      const appended = ours.reduce((n, fr) => n + (fr.appends.get(g) ?? 0), 0);
      // The incremental base is never lost: an unwritten page keeps its parent's copy, unsaved.
      if (clean && (copy[g] !== parent.copy[g] || appended)) {
        fail(`page ${g}, unwritten since the parent, was saved again (${appended}) or remapped`);
      }
      // After a copy-on-write point a page is saved by the one host that owes it, once; main may
      // save it twice, when the guest wrote it while main's save of it was still on its way to
      // disk (the copy made aside then supersedes it). Before the point (pages leaving main while
      // the vCPUs pause) a late dirty bit may void a copy that was in fact current.
      if (this.mode === "cow") {
        const after = ours.map((fr, k) => (fr.appends.get(g) ?? 0) - (pt.appends[k].get(g) ?? 0));
        const hosts = ours.filter((_, k) => after[k] > 0).map((fr) => fr.host);
        const n = after.reduce((a, b) => a + b, 0);
        if (hosts.length > 1 || n > (hosts[0] === MAIN ? 2 : 1)) {
          fail(`page ${g} was saved ${n} times after the point, on hosts ${hosts}`);
        }
      }
    }
    const counts = c.counts();
    for (let h = 0; h < counts.length; h++) {
      const f = this.frags[base + h];
      const mapped = copy.reduce((n, x) => n + (x === base + h ? 1 : 0), 0);
      const wrote = f.appends.size;
      const ok = h === MAIN ? counts[h] === wrote : counts[h] <= wrote;
      if (!ok || counts[h] < mapped) {
        fail(`host ${h} counted ${counts[h]} pages saved, wrote ${wrote}, holds ${mapped} copies`);
      }
    }
  }

  /** Squashes the chain: one fragment per host holding the pages whose copies it held. */
  #merge(): void {
    const last = this.#committed!, pages = this.cl.cfg.pages;
    const byHost = new Map<number, number>();
    const copy = new Int32Array(pages);
    for (let g = 0; g < pages; g++) {
      const old = this.frags[last.copy[g]];
      let f = byHost.get(old.host);
      if (f === undefined) {
        f = this.frags.length;
        byHost.set(old.host, f);
        this.frags.push(new SimFragment(old.host, this.sched, `merged fragment ${f}`));
      }
      this.frags[f].adopt(g, old.get(g)!);
      copy[g] = f;
    }
    this.#committed = { copy, version: last.version, chain: 1 };
    this.counts.merges++;
    this.sched.note(`chain merged into fragments ${[...byHost.values()]}`);
  }

  async run(): Promise<SimCounts> {
    const rng = this.sched.rng;
    await this.#run(rng.int(60));
    const gens = 3 + rng.int(4);
    for (let k = 0; k < gens; k++) {
      await this.#checkpoint(!!this.#committed && rng.chance(0.75));
      await this.#run(rng.int(40));
      if (this.#committed && this.#committed.chain >= 2 && rng.chance(0.35)) this.#merge();
      if (rng.chance(0.15) && this.cl.own.hosts < 6) {
        this.cl.addSub();
        this.counts.hostsAdded++;
      }
    }
    // Everything under way finishes; then every page is where the table says, as written.
    this.sched.failRate = 0;
    for (let i = 0; this.sched.pending || this.cl.moves; i++) {
      if (i > STEP_LIMIT) throw this.sched.failure("moves do not finish");
      this.sched.fire();
      await settle();
    }
    this.cl.audit();
    const { counts: pc } = this.cl;
    Object.assign(this.counts, {
      seeds: 1,
      pageIns: pc.pageIns,
      pageOuts: pc.pageOuts,
      across: pc.across,
      failedMoves: pc.failedMoves,
      writes: pc.writes,
      faults: this.sched.faults,
    });
    return this.counts;
  }
}

/** What one seed did, and a digest of its whole course. */
export interface SimResult {
  counts: SimCounts;
  /** Equal for two runs that took the same course (a seed replays exactly). */
  digest: number;
}

/** How much of a run's course is kept and shown. */
export interface SimOptions {
  /** Events kept for a failure's report (120 unless given). */
  traceLimit?: number;
  /** Told every event as it happens. */
  log?: (line: string) => void;
}

/** Runs seed `seed`: a chain of `mode` checkpoints, with failures injected when `failures`. */
export async function simulate(
  seed: number,
  mode: CheckpointMode,
  failures: boolean,
  opts: SimOptions = {},
): Promise<SimResult> {
  const run = new SimRun(seed, mode, failures, opts);
  const counts = await run.run();
  return { counts, digest: run.sched.digest };
}

/** One line of counts for a log. */
export function formatCounts(c: SimCounts): string {
  return `${c.seeds} seeds, ${c.steps} interleaving steps, ${c.pages} pages, ${c.generations} ` +
    `generations (${c.committed} committed, ${c.aborted} aborted, ${c.merges} merges), ` +
    `${c.pageIns} page-ins, ${c.pageOuts} page-outs, ${c.across} moves across, ` +
    `${c.failedMoves} failed moves, ${c.faults} injected failures, ${c.hostsAdded} hosts added, ` +
    `${c.writes} guest writes`;
}
