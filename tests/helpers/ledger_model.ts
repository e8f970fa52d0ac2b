/**
 * The model of a split VM under parallel checkpoints (docs/CONSISTENCY.md) that
 * tests/ckpt_consistency_model_test.ts drives: the real PageOwnership, SaveLedger, SubSaver and
 * DirtyTracker, with main's memory, the sub-hosts' stores and every fragment as version numbers,
 * and moves, saves, fragment writes, reports and failures as steps (tests/helpers/
 * ledger_model_steps.ts). This file is the VM: memory, stores, moves and guest writes; the steps
 * run in tests/helpers/ledger_model_run.ts, and a generation is taken, committed (restored and
 * audited) or aborted in tests/helpers/ledger_model_gen.ts.
 */
import { DirtyTracker } from "../../src/memory/dirty_tracker.ts";
import { MAIN, PageOwnership } from "../../src/paging/ownership.ts";
import { ALL_RULES, type LedgerRules } from "../../src/paging/save_ledger.ts";
import type { SubSaverIo } from "../../src/paging/sub_saver.ts";
import {
  type Counts,
  type Fragment,
  InjectedFailure,
  ModelFailure,
  noCounts,
  put,
} from "./ledger_model_chain.ts";
import type { Gen } from "./ledger_model_gen.ts";

/** A move under way. */
interface Move {
  kind: "in" | "out" | "across";
  g: number;
  from: number;
  to: number;
  /** Bytes sent by main (page-out). */
  bytes: number;
  /** The source let go (a sub-host's beforeLeaving resolved). */
  ready: boolean;
}

/** A fragment write of a sub-host, waiting for its disk. */
interface Gate {
  ok(): void;
  err(e: Error): void;
}

/** Most hosts a run grows to (main and sub-hosts). */
const MAX_HOSTS = 6;

/** Lets every promise chain that can advance advance. */
export async function settle(): Promise<void> {
  for (let i = 0; i < 16; i++) await Promise.resolve();
}

/** What a model checks besides the restore, and where it counts. */
export interface ModelOptions {
  rules?: LedgerRules;
  /** Audit what was saved (off for the planted-rule searches, which look for restores). */
  audit?: boolean;
  counts?: Counts;
  /**
   * A page-out to the sub-host a zero-filled page's release is still queued for cancels the
   * release, as RemotePager.put does (a known bug in cow: the sub-host never saves the page it
   * owes before the page-out overwrites it). Off, such a page-out waits for the release.
   */
  cancelReleases?: boolean;
  /** Keep a trace of every step for the failure message (runScenario turns it on to replay one). */
  trace?: boolean;
}

/** The split VM: its holder table, memory, stores and the moves and saves under way. */
export abstract class ModelVm {
  readonly own: PageOwnership;
  /** Main's memory (-1 where main does not hold the page). */
  readonly mainMem: Int32Array;
  /** Sub-host stores (index = host; 0 unused): bytes kept after a release, and the held bits. */
  readonly store: { bytes: Int32Array; held: Uint8Array }[] = [];
  /** Pending fragment writes of each sub-host, oldest first. */
  readonly gates: Gate[][] = [];
  readonly tracker: DirtyTracker;
  readonly trace: string[] = [];
  /** Traces are kept only to explain a failure: building them costs more than the run. */
  readonly tracing: boolean;
  readonly rules: LedgerRules;
  readonly audit: boolean;
  readonly counts: Counts;
  /** The checkpoint under way. */
  gen: Gen | null = null;
  protected moves: Move[] = [];
  private version = 0;
  /** Written, not yet read from the dirty log. */
  private readonly dirty = new Set<number>();
  /**
   * Guest writes that faulted on a moving page, by page: on one leaving a host they are routed
   * again once the move settles (remote_pager's settleWaiters); on one being paged in they land
   * with it (its UFFDIO_COPY wakes them, faultedWhileIn), or fault again if the page-in fails.
   */
  private readonly waitLeave = new Map<number, number>();
  protected readonly waitIn = new Map<number, number>();
  protected asyncError: unknown = null;
  /** 1: its sub-host was given the page as a zero page and it never moved since (pager's `zero`). */
  private readonly zero: Uint8Array;
  /** Releases main owes sub-hosts for pages it zero-filled, by page: queued, or sent. */
  protected readonly releases = new Map<number, { s: number; sent: boolean }>();
  private readonly cancelReleases: boolean;

  constructor(
    readonly pages: number,
    subs: number,
    holders: number[],
    /** Pages per fragment append of the savers. */ readonly batch: number,
    opts: ModelOptions = {},
  ) {
    this.rules = opts.rules ?? ALL_RULES;
    this.audit = opts.audit ?? true;
    this.counts = opts.counts ?? noCounts();
    this.cancelReleases = opts.cancelReleases ?? false;
    this.tracing = opts.trace ?? false;
    this.own = new PageOwnership(pages, subs + 1, (g) => holders[g] % (subs + 1));
    this.mainMem = new Int32Array(pages);
    this.zero = new Uint8Array(pages);
    for (let s = 0; s <= subs; s++) this.addStore();
    for (let g = 0; g < pages; g++) {
      const h = this.own.holderOf(g);
      if (h === MAIN) this.mainMem[g] = 0;
      else {
        this.mainMem[g] = -1;
        this.store[h].held[g] = 1;
        this.zero[g] = 1;
      }
    }
    // The dirty log as KVM gives it: a bitmap of the pages written since the last read.
    this.tracker = new DirtyTracker(pages, () => {
      const bits = new Uint8Array(Math.ceil(pages / 64) * 8);
      for (const g of this.dirty) bits[g >> 3] |= 1 << (g & 7);
      this.dirty.clear();
      return bits;
    });
  }

  private addStore(): void {
    this.store.push({ bytes: new Int32Array(this.pages), held: new Uint8Array(this.pages) });
    this.gates.push([]);
  }

  /** Sub-hosts, added ones included. */
  get subs(): number {
    return this.own.hosts - 1;
  }

  /** Fails the run with `msg` and the trace so far. */
  fail(msg: string, kind: ModelFailure["kind"]): never {
    throw new ModelFailure(`${msg}\ntrace:\n  ${this.trace.join("\n  ")}`, kind);
  }

  /** Fails the run at the end of the step, from a promise chain (where a throw would be lost). */
  protected failLater(msg: string, kind: ModelFailure["kind"]): void {
    this.asyncError ??= new ModelFailure(`${msg}\ntrace:\n  ${this.trace.join("\n  ")}`, kind);
  }

  /** An error from a promise chain the model started: injected ones fail the checkpoint. */
  protected caught(gen: Gen | null, e: unknown, what: string): void {
    if (e instanceof InjectedFailure) {
      if (gen) gen.failed ??= `${what}: ${e.message}`;
    } else this.asyncError ??= e;
  }

  /** True when host `h` holds `g` and it is not moving (what a round may claim). */
  idleAt(h: number, g: number): boolean {
    return this.own.holderOf(g) === h && !this.own.isMoving(g);
  }

  /** The first page at or after `g` (cyclically) that satisfies `pred`, or -1. */
  protected firstFrom(g: number, pred: (g: number) => boolean): number {
    for (let k = 0; k < this.pages; k++) {
      const x = (g + k) % this.pages;
      if (pred(x)) return x;
    }
    return -1;
  }

  /** Memory as the guest sees it: each page's bytes on its holder. */
  truth(): Int32Array {
    const t = new Int32Array(this.pages);
    for (let g = 0; g < this.pages; g++) {
      const h = this.own.holderOf(g);
      t[g] = h === MAIN ? this.mainMem[g] : this.store[h].bytes[g];
    }
    return t;
  }

  /** Sub-host s's store and fragment as its saver sees them; `written` hears of each completed write. */
  protected io(s: number, frag: Fragment, written: (gfns: number[]) => void): SubSaverIo {
    return {
      holds: (g) => this.store[s].held[g] === 1,
      write: (gfns) => {
        for (const g of gfns) {
          if (!this.store[s].held[g]) {
            this.fail(`sub-host ${s} asked to write gfn ${g} it does not hold`, "saved");
          }
          put(frag, g, this.store[s].bytes[g]);
        }
        if (this.tracing) {
          this.trace.push(`  sub ${s} writes ${gfns} to its fragment of generation ${frag.gen}`);
        }
        return new Promise<void>((ok, err) =>
          this.gates[s].push({
            ok: () => {
              written(gfns);
              ok();
            },
            err,
          })
        );
      },
    };
  }

  // --- the guest --------------------------------------------------------------------------------

  /**
   * A guest write of `g`, routed as the pager routes a fault: on main it lands (copied aside first
   * if main owes it at a cow point); on a page leaving a host it waits for the move to settle and
   * is routed again (remote_pager's settleWaiters); on a page being paged in it lands when the page
   * does; on a sub-host's page it faults the page in first, or takes it over as a zero page if its
   * sub-host was given it so and it never moved (the sub-host hears of it with the release).
   */
  protected write(g: number): void {
    const own = this.own, wait = (m: Map<number, number>) => m.set(g, (m.get(g) ?? 0) + 1);
    if (own.isMoving(g)) {
      const leaving = own.isLeaving(g);
      wait(leaving ? this.waitLeave : this.waitIn);
      this.counts.waitedWrites++;
      if (this.tracing) {
        this.trace.push(`  write ${g} waits for its ${leaving ? "move to settle" : "page-in"}`);
      }
      return;
    }
    if (own.holderOf(g) !== MAIN) {
      if (!this.zero[g]) {
        this.beginIn(g);
        wait(this.waitIn);
        return;
      }
      this.zeroFill(g);
    }
    const gen = this.gen;
    if (gen && gen.ledger.isFrozen && gen.ledger.owedBy(g, MAIN)) {
      // Copy-on-write: the point-in-time contents go aside before the first write.
      this.saveMain([g], "aside");
    }
    this.mainMem[g] = ++this.version;
    this.dirty.add(g);
    if (this.tracing) this.trace.push(`  write ${g} = ${this.version}`);
  }

  /**
   * A fault on a page its sub-host holds as a zero page: main takes it over as zeros at once, with
   * no GET, so the sub-host's saver hears of it only with the release, queued (RemotePager.route).
   */
  private zeroFill(g: number): void {
    const s = this.own.holderOf(g);
    this.own.beginIn(g);
    this.own.endIn(g);
    this.zero[g] = 0;
    this.mainMem[g] = this.store[s].bytes[g];
    this.releases.set(g, { s, sent: false });
    this.counts.zeroFills++;
    if (this.tracing) this.trace.push(`  zero-fill ${g} from ${s}; its release is queued`);
  }

  /** Main sends `g`'s release: its sub-host saves it first if it owes it, then drops it. */
  protected sendRelease(g: number): void {
    const r = this.releases.get(g)!, gen = this.gen, saver = gen?.savers.get(r.s);
    r.sent = true;
    if (this.tracing) this.trace.push(`  release ${g} to ${r.s}`);
    const done = () => {
      this.releases.delete(g);
      this.store[r.s].held[g] = 0;
    };
    if (!saver) return done();
    saver.beforeLeaving([g]).then(done, (e) => {
      this.caught(gen, e, `sub-host ${r.s} saving gfn ${g} as it is released`);
      done();
    });
  }

  /**
   * True when `g` must not move to sub-host `to` yet: a release of it to `to` is under way (the
   * agent would drop the page after it arrived), or queued and not cancelled by the move.
   */
  protected releaseBlocks(g: number, to: number): boolean {
    const r = this.releases.get(g);
    return !!r && r.s === to && (r.sent || !this.cancelReleases);
  }

  /** A move of `g` to `to` cancels a release of it to `to` still queued (cancelReleases). */
  private cancelRelease(g: number, to: number): void {
    const r = this.releases.get(g);
    if (!r || r.s !== to || r.sent) return;
    this.releases.delete(g);
    if (this.tracing) this.trace.push(`  release ${g} to ${to} cancelled`);
  }

  /** `mv` settled (ended or failed): the writes it wakes are routed again. */
  private settled(mv: Move): void {
    const g = mv.g,
      n = (this.waitLeave.get(g) ?? 0) + (mv.kind === "in" ? this.waitIn.get(g) ?? 0 : 0);
    this.waitLeave.delete(g);
    if (mv.kind === "in") this.waitIn.delete(g);
    for (let i = 0; i < n; i++) this.write(g);
  }

  /** The dirty log is read: the checkpoint under way hears of it through the tracker. */
  protected sample(): void {
    const bits = this.tracker.sample();
    const gfns = DirtyTracker.gfns(bits, this.pages);
    if (this.tracing && gfns.length) this.trace.push(`  sample ${gfns}`);
  }

  // --- moves ------------------------------------------------------------------------------------

  /** Main starts paging `g` in (GET): its sub-host's saver saves it first if it owes it. */
  protected beginIn(g: number): void {
    const from = this.own.holderOf(g);
    const mv: Move = { kind: "in", g, from, to: MAIN, bytes: 0, ready: false };
    this.own.beginIn(g);
    this.moves.push(mv);
    if (this.tracing) this.trace.push(`  begin in ${g} from ${from}`);
    this.leaving(mv);
  }

  /** Main pages `g` out, saving it first if the ledger says so (rule 2, leavingMain). */
  protected beginOut(g: number, to: number): void {
    this.cancelRelease(g, to);
    this.own.beginOut(g, to);
    const mv: Move = { kind: "out", g, from: MAIN, to, bytes: this.mainMem[g], ready: true };
    this.moves.push(mv);
    if (this.tracing) this.trace.push(`  begin out ${g} to ${to}`);
    this.replacing(mv);
    const l = this.gen?.ledger;
    if (l && this.audit && l.rules.saveBeforePageOut) {
      // Rule 2 as docs/CONSISTENCY.md states it: main saves a page leaving without a copy, after a
      // cow point only one it owes. (Before the point it saves early what the next round would.)
      const must = !l.has(g) && (!l.isFrozen || l.owedBy(g, MAIN));
      if (l.mustSaveBeforePageOut(g) !== must) {
        this.fail(`gfn ${g} leaves main: the ledger says ${!must} to saving it first`, "saved");
      }
    }
    if (l?.mustSaveBeforePageOut(g) && !this.saveMain([g], "out")) {
      // Unsaved, the page must not leave: it goes back into main's memory (putBack).
      this.failMove(mv);
    }
  }

  /** `g` starts moving from its sub-host to sub-host `to` (GET there, then PUT). */
  protected beginAcross(g: number, to: number): void {
    const from = this.own.holderOf(g);
    const mv: Move = { kind: "across", g, from, to, bytes: 0, ready: false };
    this.cancelRelease(g, to);
    this.own.beginAcross(g, to);
    this.moves.push(mv);
    if (this.tracing) this.trace.push(`  begin across ${g} from ${from} to ${to}`);
    this.leaving(mv);
  }

  /**
   * A page-out reaches a sub-host that still holds the page (its release was cancelled): the
   * agent's saver saves it first if it owes it, as pages.ts does before a PUT replaces a page.
   */
  private replacing(mv: Move): void {
    const gen = this.gen, saver = gen?.savers.get(mv.to);
    if (!saver || !this.store[mv.to].held[mv.g]) return;
    mv.ready = false;
    saver.beforeLeaving([mv.g]).then(() => mv.ready = true, (e) => {
      this.caught(gen, e, `sub-host ${mv.to} saving gfn ${mv.g} before a PUT replaces it`);
      mv.ready = true;
    });
  }

  /** A page leaves sub-host `mv.from` (GET): its saver saves it first if it owes it (rule 1). */
  private leaving(mv: Move): void {
    const gen = this.gen, saver = gen?.savers.get(mv.from);
    if (!saver) {
      mv.ready = true;
      return;
    }
    saver.beforeLeaving([mv.g]).then(() => mv.ready = true, (e) => {
      // The agent fails its checkpoint session and hands the page over anyway (page_saves.ts).
      this.caught(gen, e, `sub-host ${mv.from} saving gfn ${mv.g} on its way out`);
      mv.ready = true;
    });
  }

  /** `mv` completes: its target holds the page (a page-in's sub-host releases it at once). */
  protected endMove(mv: Move): void {
    this.moves.splice(this.moves.indexOf(mv), 1);
    const { g, from, to } = mv;
    if (mv.kind === "in") {
      this.own.endIn(g);
      this.mainMem[g] = this.store[from].bytes[g];
      this.store[from].held[g] = 0; // a release clears the held bit; the bytes stay
    } else if (mv.kind === "out") {
      this.own.endOut(g);
      this.store[to].bytes[g] = mv.bytes;
      this.store[to].held[g] = 1;
      this.mainMem[g] = -1;
    } else {
      this.own.endAcross(g);
      this.store[to].bytes[g] = this.store[from].bytes[g];
      this.store[to].held[g] = 1;
      this.store[from].held[g] = 0;
    }
    this.zero[g] = 0;
    if (this.tracing) this.trace.push(`  end ${mv.kind} ${g}`);
    this.settled(mv);
  }

  /**
   * A move fails after its source let go (a GET or PUT error): ownership.abort, and the page stays
   * where it was with its bytes; a page-out's go back into main's memory (putBack).
   */
  protected failMove(mv: Move): void {
    this.moves.splice(this.moves.indexOf(mv), 1);
    this.own.abort(mv.g);
    if (mv.kind === "out") this.mainMem[mv.g] = mv.bytes;
    this.counts.failedMoves++;
    if (this.tracing) this.trace.push(`  ${mv.kind} ${mv.g} fails; host ${mv.from} keeps it`);
    this.settled(mv);
  }

  /** Moves whose source let go. */
  protected ready(): Move[] {
    return this.moves.filter((m) => m.ready);
  }

  /** A sub-host joins (PageOwnership.addHost) and a page of a sub-host and one of main start moving to it. */
  protected addHost(g: number): void {
    if (this.gen || this.own.hosts >= MAX_HOSTS) return;
    const h = this.own.addHost();
    this.addStore();
    this.counts.hostsAdded++;
    if (this.tracing) this.trace.push(`  sub-host ${h} joins`);
    const a = this.firstFrom(g, (x) => this.own.holderOf(x) !== MAIN && !this.own.isMoving(x));
    if (a >= 0) this.beginAcross(a, h);
    const o = this.firstFrom(g + 1, (x) => this.idleAt(MAIN, x));
    if (o >= 0) this.beginOut(o, h);
  }

  /** Main saves `gfns` (the checkpoint's side, tests/helpers/ledger_model_gen.ts); false when its fragment write fails. */
  protected abstract saveMain(gfns: number[], why: "round" | "out" | "aside"): boolean;
}
