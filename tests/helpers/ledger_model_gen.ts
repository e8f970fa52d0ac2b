/**
 * How the consistency model takes a checkpoint, as src/paging/split_checkpoint.ts does: a ledger
 * inheriting the last committed generation's copies and the dirty bits since its point (the real
 * DirtyTracker's transaction), a saver per sub-host, rounds, the pause, the cow freeze, the last
 * rounds, and then a commit (restored, audited) or an abort (the bits go back, the last committed
 * checkpoint stays whole). Merges squash the committed chain between generations.
 */
import { expandPageMap } from "../../src/ckpt/page_map.ts";
import { DirtyTracker, type DirtyTransaction } from "../../src/memory/dirty_tracker.ts";
import { MAIN } from "../../src/paging/ownership.ts";
import { ConsistencyError, SaveLedger } from "../../src/paging/save_ledger.ts";
import { SubSaver } from "../../src/paging/sub_saver.ts";
import type { ModelOptions } from "./ledger_model.ts";
import { ModelSteps } from "./ledger_model_run.ts";
import { SaveAudit } from "./ledger_model_audit.ts";
import {
  type Committed,
  type Fragment,
  fragment,
  mergeChain,
  noCounts,
  put,
  restoreWrong,
} from "./ledger_model_chain.ts";
import type { GenPlan, Mode, Scenario, Step } from "./ledger_model_steps.ts";

/** A save main or a sub-host made whose report has not reached the ledger yet. */
export interface Report {
  host: number;
  /** Pages saved (main) or asked for (a sub-host). */
  gfns: number[];
  ticket: Uint32Array;
  /** A sub-host's answer: what it saved, including pages saved on their way out. */
  saved?: number[];
  /** The report ends a round of `host`. */
  round: boolean;
}

/** A save request main sent a sub-host, with the stamps taken when main claimed the pages. */
export interface Request {
  s: number;
  gfns: number[];
  stamps: Map<number, number>;
}

/** One checkpoint generation under way. */
export interface Gen {
  /** Generation number over the run. */
  n: number;
  mode: Mode;
  ledger: SaveLedger;
  /** This generation's fragment index on each host. */
  fragOf: number[];
  /** The chain's fragments: the parent's, then this generation's. */
  frags: Fragment[];
  parent: Committed | null;
  savers: Map<number, SubSaver>;
  /** Save requests main sent to sub-hosts, not received yet. */
  requests: Request[];
  /** Saves done whose report has not reached the ledger yet. */
  reports: Report[];
  /** SubSaver.save calls not finished. */
  busy: number;
  /** Hosts whose round is under way: claimed, not reported yet. */
  inRound: Set<number>;
  txn: DirtyTransaction;
  audit: SaveAudit;
  /** Per sub-host: pages whose fragment write completed since its last answer. */
  sinceAnswer: Map<number, Set<number>>;
  /** Why it fails: it aborts at the end of the step. */
  failed?: string;
  /** Main's next fragment write fails. */
  mainFails?: boolean;
  truth?: Int32Array;
  holder?: Uint8Array;
}

/** The steps a stopped VM still runs: saves and their failures. */
const SAVES = new Set<Step["k"]>([
  "claim",
  "request",
  "io",
  "ioerr",
  "report",
  "rpcerr",
  "mainerr",
]);
/** Rounds after the pause (split_checkpoint.ts's MAX_ROUNDS). */
const MAX_ROUNDS = 10;

/** The split VM and the chain of checkpoints taken of it. */
export class Model extends ModelSteps {
  /** The last committed checkpoint. */
  private head: Committed | null = null;
  private generation = 0;

  /** Runs `plan`: a merge, steps between, and one checkpoint with its steps interleaved. */
  async checkpoint(plan: GenPlan): Promise<void> {
    if (plan.merge) this.merge();
    await this.run(plan.between);
    const gen = this.startGen(plan);
    const live = () => this.gen === gen;
    if (plan.mode !== "precopy") await this.pause(gen);
    if (plan.mode === "cow" && live()) this.freeze(gen);
    for (const st of plan.steps) {
      // Stopped, the VM runs nothing but the saves (until the checkpoint aborts and it resumes).
      if (plan.mode === "stop" && live() && !SAVES.has(st.k)) continue;
      await this.step(st);
    }
    if (live() && plan.mode === "precopy") await this.pause(gen);
    if (live()) await this.finish(gen);
    if (live()) this.commit(gen);
  }

  private startGen(plan: GenPlan): Gen {
    const parent = plan.full ? null : this.head, P = this.pages;
    const n = ++this.generation;
    const base = parent ? parent.frags.length : 0;
    const fragOf = Array.from({ length: this.own.hosts }, (_, h) => base + h);
    const frags = [...(parent?.frags ?? []), ...fragOf.map((_, h) => fragment(h, n))];
    const inherited = parent ? Int32Array.from(expandPageMap(parent.map, P)) : undefined;
    const ledger = new SaveLedger(P, fragOf, inherited, this.rules);
    const holderOf = (g: number) => this.own.holderOf(g);
    // As the driver does: the bits since the last committed point void inherited copies, and
    // every later read of the log voids copies until the pause.
    const txn = this.tracker.begin();
    ledger.written(DirtyTracker.gfns(txn.bits, P), holderOf);
    this.tracker.onSample = (bits) => ledger.written(DirtyTracker.gfns(bits, P), holderOf);
    const gen: Gen = {
      n,
      mode: plan.mode,
      ledger,
      fragOf,
      frags,
      parent,
      savers: new Map(),
      requests: [],
      reports: [],
      busy: 0,
      inRound: new Set(),
      txn,
      audit: new SaveAudit(),
      sinceAnswer: new Map(),
    };
    for (let s = 1; s < this.own.hosts; s++) {
      const since = new Set<number>();
      gen.sinceAnswer.set(s, since);
      const io = this.io(s, frags[fragOf[s]], (gfns) => gfns.forEach((g) => since.add(g)));
      gen.savers.set(s, new SubSaver(io, this.rules, this.batch));
    }
    if (this.tracing) {
      this.trace.push(
        `start ${plan.mode} generation ${n}${
          parent ? ` on ${parent.what}` : ""
        } (fragments ${fragOf})`,
      );
    }
    return this.gen = gen;
  }

  /**
   * Pause: in-flight moves finish, and the writes that waited for them (saves and reports under
   * way may land later); the dirty log is sampled and sealed; that is the consistency point.
   */
  private async pause(gen: Gen): Promise<void> {
    await this.drain(true, false);
    if (this.gen !== gen) return;
    this.sample();
    // The driver stops telling the ledger of writes here. In cow the model goes on telling it
    // (the bits still go to the next checkpoint): past the point the ledger must ignore them.
    if (gen.mode !== "cow") this.tracker.onSample = undefined;
    this.tracker.seal();
    gen.truth = this.truth();
    gen.holder = Uint8Array.from({ length: this.pages }, (_, g) => this.own.holderOf(g));
    if (this.tracing) this.trace.push(`consistency point: ${gen.truth.join(",")}`);
  }

  /** The cow point: every page without a copy is owed by its holder; sub-hosts get their lists. */
  private freeze(gen: Gen): void {
    gen.ledger.freeze((g) => this.own.holderOf(g));
    for (const [s, saver] of gen.savers) {
      const owed: number[] = [];
      for (let g = 0; g < this.pages; g++) if (gen.ledger.owedBy(g, s)) owed.push(g);
      saver.owe(owed);
      gen.audit.ask(s, owed);
    }
  }

  /** The last rounds, as the driver runs them: every host, until no page lacks a copy. */
  private async finish(gen: Gen): Promise<void> {
    await this.drain(true);
    for (let k = 0; this.gen === gen && gen.ledger.missing() > 0; k++) {
      if (k >= MAX_ROUNDS) {
        this.fail(`${gen.ledger.missing()} pages could not be saved in ${k} rounds`, "restore");
      }
      for (let h = 0; h < this.own.hosts && this.gen === gen; h++) this.claim(h);
      await this.drain(true);
    }
  }

  /** Restores `gen` from its page map, compares it with its point, audits it; it is the head. */
  private commit(gen: Gen): void {
    const holder = gen.holder!, truth = gen.truth!;
    const what = `${gen.mode} generation ${gen.n}${gen.parent ? " (incremental)" : ""}`;
    let map: Uint32Array;
    try {
      map = gen.ledger.pageMap((g) => holder[g]);
    } catch (e) {
      // A page without a copy: the checkpoint would not commit, which the property counts as wrong.
      if (!(e instanceof ConsistencyError)) throw e;
      this.fail(`${what}: the ledger refuses to commit: ${e.message}`, "restore");
    }
    const c: Committed = {
      what,
      frags: gen.frags,
      map,
      truth,
      length: gen.parent ? gen.parent.length + 1 : 1,
    };
    const wrong = restoreWrong(c);
    if (wrong) this.fail(wrong, "restore");
    if (this.audit) {
      const holds = (s: number, g: number) => this.store[s].held[g] === 1;
      const w = gen.audit.wrong({ ...gen, truth, holder, holds });
      if (w) this.fail(`${what}: ${w}`, "saved");
    }
    this.own.check();
    for (let g = 0; g < this.pages; g++) {
      // Every page is where the holder table says: a store that lost a page loses it for good.
      const h = this.own.holderOf(g);
      if (h === MAIN ? this.mainMem[g] < 0 : !this.store[h].held[g]) {
        this.fail(`host ${h} holds gfn ${g} by the table, but not in its memory or store`, "model");
      }
    }
    this.tracker.onSample = undefined;
    this.tracker.commit(gen.txn);
    this.head = c;
    this.gen = null;
    this.counts.generations++;
    if (gen.parent) this.counts.incrementals++;
    if (this.tracing) this.trace.push(`commit ${what}`);
  }

  /** The checkpoint failed: its bits go back, its fragments go, the last committed one holds. */
  protected override abortGen(gen: Gen): void {
    this.counts.aborts++;
    if (this.tracing) this.trace.push(`abort generation ${gen.n}: ${gen.failed}`);
    this.tracker.onSample = undefined;
    this.tracker.abort(gen.txn);
    this.gen = null;
    const wrong = this.head && restoreWrong(this.head);
    if (wrong) this.fail(`after generation ${gen.n} aborted: ${wrong}`, "restore");
  }

  /** Squashes the committed chain (split_merge.ts); the next incremental builds on the result. */
  private merge(): void {
    if (!this.head || this.gen) return;
    const n = ++this.generation;
    this.head = mergeChain(this.head, n);
    this.counts.merges++;
    if (this.tracing) this.trace.push(`merge into generation ${n}`);
    const wrong = restoreWrong(this.head);
    if (wrong) this.fail(wrong, "restore");
  }

  // --- saves ------------------------------------------------------------------------------------

  /**
   * Main saves `gfns` from its memory: a round's report reaches the ledger later; a save before a
   * page-out (leavingMain) and a copy aside tell it at once, as the pager does before the page
   * moves or the write lands.
   */
  protected override saveMain(gfns: number[], why: "round" | "out" | "aside"): boolean {
    const gen = this.gen!;
    for (const g of gfns) {
      // Main saves a page only while the ledger knows no copy of it that holds: a second copy
      // would be a write nobody needs, and in cow later contents.
      if (this.audit && gen.ledger.has(g)) {
        this.fail(`main saves gfn ${g} (${why}) whose copy holds`, "saved");
      }
    }
    if (gen.mainFails) {
      gen.failed ??= `main's fragment write failed (${why} of ${gfns})`;
      return false;
    }
    const ticket = gen.ledger.ticket(gfns);
    const frag = gen.frags[gen.fragOf[MAIN]];
    for (const g of gfns) put(frag, g, this.mainMem[g]);
    if (this.tracing) {
      this.trace.push(`  main saves ${gfns} (${gfns.map((g) => this.mainMem[g])}) ${why}`);
    }
    if (why === "round") gen.reports.push({ host: MAIN, gfns, ticket, round: true });
    else gen.ledger.saved(MAIN, gfns, ticket);
    return true;
  }

  /**
   * A round of host `h`: main claims what `h` should save now (what it holds, not on the move);
   * main saves its own at once, a sub-host's go out as a save request. In cow a host's rounds do
   * not overlap (as the driver's do not): see docs/CONSISTENCY.md.
   */
  protected override claim(h: number): void {
    const gen = this.gen;
    if (!gen || (gen.mode === "cow" && gen.inRound.has(h))) return;
    const idle = (g: number) => this.idleAt(h, g);
    const gfns = gen.ledger.claim(h, idle);
    if (this.audit && !gen.ledger.isFrozen) {
      // Before a cow point a round is every page the host holds, still, without a copy.
      const want = [];
      for (let g = 0; g < this.pages; g++) {
        if (idle(g) && !gen.ledger.has(g)) want.push(g);
      }
      if (want.join() !== gfns.join() || gfns.some((g) => !gen.ledger.owedBy(g, h))) {
        this.fail(`claim for host ${h} gave ${gfns}, not ${want}`, "saved");
      }
    }
    // After a copy-on-write point a sub-host is asked anyway: it reports pages saved on their way out.
    if (!gfns.length && (h === MAIN || !gen.ledger.isFrozen)) return;
    if (this.tracing) this.trace.push(`  claim for host ${h}: ${gfns}`);
    gen.inRound.add(h);
    if (h === MAIN) this.saveMain(gfns, "round");
    else {
      const t = gen.ledger.ticket(gfns);
      gen.requests.push({ s: h, gfns, stamps: new Map(gfns.map((g, i) => [g, t[i]])) });
    }
  }

  protected override report(r: Report): void {
    const gen = this.gen!;
    if (this.tracing) {
      this.trace.push(`  report host ${r.host}: ${r.gfns}${r.saved ? ` saved ${r.saved}` : ""}`);
    }
    if (!r.saved) gen.ledger.saved(r.host, r.gfns, r.ticket);
    else {
      const f = gen.fragOf[r.host], before = gen.ledger.copy.map((c) => c === f ? 1 : 0);
      const stood = gen.ledger.reported(r.host, r.gfns, r.ticket, r.saved);
      // What the driver counts as this host's saves: exactly the copies this answer made stand.
      const made = [];
      for (let g = 0; g < this.pages; g++) if (gen.ledger.copy[g] === f && !before[g]) made.push(g);
      if (this.audit && stood.some((g) => gen.ledger.copy[g] !== f || !r.saved!.includes(g))) {
        this.fail(`the ledger says ${stood} of sub-host ${r.host}'s answer stand`, "saved");
      }
      if (this.audit && made.some((g) => !stood.includes(g))) {
        this.fail(
          `sub-host ${r.host}'s answer made ${made} stand, the ledger says ${stood}`,
          "saved",
        );
      }
      gen.audit.stand(r.host, stood);
    }
    if (r.round) gen.inRound.delete(r.host);
  }

  protected override request(r: Request): void {
    const gen = this.gen!;
    gen.busy++;
    gen.audit.ask(r.s, r.gfns);
    if (r.gfns.length > this.batch) this.counts.batches++;
    if (this.tracing) this.trace.push(`  sub ${r.s} save(${r.gfns})`);
    gen.savers.get(r.s)!.save(r.gfns).then(
      (saved) => {
        if (this.tracing) this.trace.push(`  sub ${r.s} saved ${saved}`);
        // An answer names, besides pages asked, only pages saved (on their way out) since the
        // sub-host's last answer.
        const since = gen.sinceAnswer.get(r.s)!;
        const extra = saved.filter((g) => !r.gfns.includes(g) && !since.has(g));
        if (this.audit && extra.length) {
          this.failLater(
            `sub-host ${r.s} answers with ${extra}, not saved since its last answer`,
            "saved",
          );
        }
        since.clear();
        const ticket = Uint32Array.from(r.gfns, (g) => r.stamps.get(g)!);
        gen.reports.push({ host: r.s, gfns: r.gfns, ticket, saved, round: true });
      },
      (e) => this.caught(gen, e, `sub-host ${r.s}'s save`),
    ).finally(() => gen.busy--);
  }
}

/**
 * Runs a scenario: each generation of its chain in turn. A run that fails is run again with its
 * trace kept (the model is deterministic), so the failure names every step.
 */
export async function runScenario(sc: Scenario, opts: ModelOptions = {}): Promise<void> {
  const run = async (o: ModelOptions) => {
    const m = new Model(sc.pages, sc.subs, sc.holders, sc.batch, o);
    for (const plan of sc.gens) await m.checkpoint(plan);
    await m.drain(true);
  };
  const counts = opts.counts ?? noCounts();
  counts.interleavings++;
  counts.pages += sc.pages;
  try {
    await run({ ...opts, counts });
  } catch (e) {
    if (opts.trace) throw e;
    await run({ ...opts, counts: noCounts(), trace: true });
    throw new Error(`the run failed only without its trace (the model is not deterministic): ${e}`);
  }
}
