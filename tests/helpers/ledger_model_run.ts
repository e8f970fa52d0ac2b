/**
 * The consistency model's steps (tests/helpers/ledger_model_steps.ts) run against its VM
 * (tests/helpers/ledger_model.ts): each step acts, then lets the promise chains it started
 * advance, and a checkpoint that failed meanwhile aborts; `drain` lets everything under way finish.
 */
import { MAIN, OwnershipError } from "../../src/paging/ownership.ts";
import { InjectedFailure } from "./ledger_model_chain.ts";
import type { Gen, Report, Request } from "./ledger_model_gen.ts";
import { ModelVm, settle } from "./ledger_model.ts";
import { type Bounce, type Step, word } from "./ledger_model_steps.ts";

/** The VM, driven by steps; the checkpoint's side is tests/helpers/ledger_model_gen.ts's. */
export abstract class ModelSteps extends ModelVm {
  /** Main claims a round for host `h`. */
  protected abstract claim(h: number): void;

  /** Sub-host `r.s` receives a save request. */
  protected abstract request(r: Request): void;

  /** A save's report reaches the ledger. */
  protected abstract report(r: Report): void;

  /** The checkpoint under way aborts. */
  protected abstract abortGen(gen: Gen): void;

  /** Runs steps with no checkpoint under way (or around the one under way). */
  async run(steps: Step[]): Promise<void> {
    for (const st of steps) await this.step(st);
  }

  /** Runs one step, then lets what it started advance. */
  async step(st: Step, indent = "> "): Promise<void> {
    if (this.tracing) this.trace.push(`${indent}${word(st)}`);
    this.counts.steps++;
    this.act(st);
    if (st.k === "bounce") await this.bounce(st);
    await settle();
    this.check();
  }

  private act(st: Step): void {
    const gen = this.gen, P = this.pages, subs = this.subs;
    switch (st.k) {
      case "write":
        return this.write(st.g % P);
      case "sample":
        return this.sample();
      case "in": {
        const g = this.firstFrom(
          st.g,
          (x) => this.own.holderOf(x) !== MAIN && !this.own.isMoving(x),
        );
        if (g >= 0) this.beginIn(g);
        return;
      }
      case "out": {
        // Not a page main is saving in a round: page-outs wait for main's memory (withMemory).
        const to = 1 + st.to % subs;
        const g = this.firstFrom(
          st.g,
          (x) => this.idleAt(MAIN, x) && !this.mainSaving(x) && !this.releaseBlocks(x, to),
        );
        if (g >= 0) this.beginOut(g, to);
        return;
      }
      case "across": {
        if (subs < 2) return;
        const g = this.firstFrom(
          st.g,
          (x) => this.own.holderOf(x) !== MAIN && !this.own.isMoving(x),
        );
        if (g < 0) return;
        const from = this.own.holderOf(g);
        const others = Array.from({ length: subs }, (_, k) => k + 1).filter((s) => s !== from);
        const to = others[st.to % others.length];
        if (!this.releaseBlocks(g, to)) this.beginAcross(g, to);
        return;
      }
      case "end":
      case "fail": {
        const c = this.ready();
        if (!c.length) return;
        const mv = c[st.i % c.length];
        return st.k === "end" ? this.endMove(mv) : this.failMove(mv);
      }
      case "claim":
        return this.claim(st.h % (subs + 1));
      case "request":
        if (gen?.requests.length) {
          this.request(gen.requests.splice(st.i % gen.requests.length, 1)[0]);
        }
        return;
      case "release": {
        const queued = [...this.releases].filter(([, r]) => !r.sent);
        if (queued.length) this.sendRelease(queued[st.i % queued.length][0]);
        return;
      }
      case "io":
        this.gates[1 + st.s % subs].shift()?.ok();
        return;
      case "ioerr": {
        const s = 1 + st.s % subs;
        this.gates[s].shift()?.err(new InjectedFailure(`a fragment write on sub-host ${s} failed`));
        return;
      }
      case "report":
        if (gen?.reports.length) this.report(gen.reports.splice(st.i % gen.reports.length, 1)[0]);
        return;
      case "rpcerr":
        if (gen) this.loseRpc(gen, st.i);
        return;
      case "mainerr":
        if (gen) gen.mainFails = true;
        return;
      case "host":
        return this.addHost(st.g);
      case "bad":
        return this.illegal(st.g % P, st.to);
      case "bounce":
        return;
    }
  }

  /** A save request not received yet, or a sub-host's answer not landed yet, is lost. */
  private loseRpc(gen: Gen, i: number): void {
    const answers = gen.reports.filter((r) => r.host !== MAIN);
    const n = gen.requests.length + answers.length;
    if (!n) return;
    i %= n;
    let s: number;
    if (i < gen.requests.length) s = gen.requests.splice(i, 1)[0].s;
    else {
      const r = answers[i - gen.requests.length];
      gen.reports.splice(gen.reports.indexOf(r), 1);
      s = r.host;
    }
    gen.failed ??= `a save RPC of sub-host ${s} failed`;
  }

  /**
   * Tries one transition of `g` that would give it two holders or none (the to-th that applies);
   * PageOwnership must refuse it and change nothing.
   */
  private illegal(g: number, k: number): void {
    const own = this.own, h = own.holderOf(g), mv = this.moves.find((m) => m.g === g);
    const tries: [string, () => void][] = [
      ["a page-out to no sub-host", () => own.beginOut(g, own.hosts)],
      ["a move across to main", () => own.beginAcross(g, MAIN)],
    ];
    if (mv) {
      tries.push(
        ["a page-in", () => own.beginIn(g)],
        ["a page-out", () => own.beginOut(g, 1)],
        ["a move across", () => own.beginAcross(g, 1 + (h % this.subs))],
        ...[["in", () => own.endIn(g)], ["out", () => own.endOut(g)], [
          "across",
          () => own.endAcross(g),
        ]]
          .filter(([kind]) => kind !== mv.kind)
          .map(([kind, fn]) => [`the end of a ${kind} move`, fn] as [string, () => void]),
      );
    } else {
      tries.push(
        ["an abort", () => own.abort(g)],
        ["the end of a page-in", () => own.endIn(g)],
        ["the end of a page-out", () => own.endOut(g)],
        ["the end of a move across", () => own.endAcross(g)],
        h === MAIN
          ? ["a page-in", () => own.beginIn(g)]
          : ["a move across to its own holder", () => own.beginAcross(g, h)],
        h === MAIN
          ? ["a move across", () => own.beginAcross(g, 1)]
          : ["a page-out", () => own.beginOut(g, h)],
      );
    }
    const [what, fn] = tries[k % tries.length];
    const before = `${own.counts()} ${h} ${own.isMoving(g)} ${mv && own.isLeaving(g)}`;
    try {
      fn();
    } catch (e) {
      if (!(e instanceof OwnershipError)) throw e;
      const after = `${own.counts()} ${own.holderOf(g)} ${own.isMoving(g)} ${
        mv && own.isLeaving(g)
      }`;
      if (after !== before) this.fail(`refusing ${what} of gfn ${g} changed the table`, "model");
      return;
    }
    this.fail(`the holder table accepted ${what} of gfn ${g}`, "model");
  }

  /** True while main's round is saving `g` (its report has not reached the ledger). */
  private mainSaving(g: number): boolean {
    return !!this.gen?.reports.some((r) => r.host === MAIN && r.round && r.gfns.includes(g));
  }

  /** The composite "leave and return within one request" (see Bounce), as primitive steps. */
  private async bounce(b: Bounce): Promise<void> {
    const g = b.g % this.pages, run = (st: Step) => this.step(st, "  >> ");
    if (this.own.isMoving(g)) return;
    this.counts.bounces++;
    if (this.own.holderOf(g) === MAIN) {
      if (this.mainSaving(g)) return;
      await run({ k: "out", g, to: b.g });
      if (!(await this.endOf(g, run))) return;
    }
    const h = this.own.holderOf(g);
    if (h === MAIN || this.own.isMoving(g)) return;
    const deliver = async () => {
      const r = this.gen?.requests.findLastIndex((q) => q.s === h && q.gfns.includes(g)) ?? -1;
      if (r >= 0) await run({ k: "request", i: r });
    };
    if (b.ask !== "none") await run({ k: "claim", h });
    if (b.ask === "before") await deliver();
    for (let i = 0; i < b.pre; i++) await run({ k: "io", s: h - 1 });
    if (this.own.isMoving(g) || this.own.holderOf(g) !== h) return;
    await run(b.via === "across" && this.subs >= 2 ? { k: "across", g, to: 0 } : { k: "in", g });
    for (let i = 0; i < b.mid; i++) await run({ k: "io", s: h - 1 });
    if (!(await this.endOf(g, run))) return;
    if (b.ask === "after") await deliver();
    const at = this.own.holderOf(g);
    if (at === MAIN) {
      if (b.write) await run({ k: "write", g });
      if (!this.idleAt(MAIN, g)) return;
      await run({ k: "out", g, to: h - 1 });
    } else if (at !== h) {
      const others = Array.from({ length: this.subs }, (_, k) => k + 1).filter((s) => s !== at);
      await run({ k: "across", g, to: others.indexOf(h) });
      for (let i = 0; i < b.mid; i++) await run({ k: "io", s: at - 1 });
    }
    await this.endOf(g, run);
  }

  /** Ends `g`'s move if its source let go; false if it has none. */
  private async endOf(g: number, run: (st: Step) => Promise<void>): Promise<boolean> {
    const i = this.ready().findIndex((m) => m.g === g);
    if (i < 0) return false;
    await run({ k: "end", i });
    return true;
  }

  /** Rethrows an error from a promise chain; aborts a checkpoint that failed. */
  protected check(): void {
    if (this.asyncError) throw this.asyncError;
    if (this.gen?.failed) this.abortGen(this.gen);
  }

  /**
   * Lets things under way finish: fragment writes always; with `moves` every move (and the writes
   * waiting for them); with `saves` every save request and report.
   */
  async drain(moves: boolean, saves = true): Promise<void> {
    for (let round = 0; round < 10_000; round++) {
      let progressed = false;
      for (const q of this.gates) {
        while (q.length) {
          q.shift()!.ok();
          progressed = true;
        }
      }
      await settle();
      this.check();
      if (moves) {
        for (const mv of this.ready()) {
          this.endMove(mv);
          progressed = true;
        }
      }
      if (saves) {
        // Queued releases go out (at the pause they may still be queued: they cross the point).
        for (const [g, r] of this.releases) {
          if (!r.sent) {
            this.sendRelease(g);
            progressed = true;
          }
        }
      }
      const gen = this.gen;
      if (gen && saves) {
        while (gen.requests.length && this.gen === gen) {
          this.request(gen.requests.shift()!);
          progressed = true;
        }
        while (gen.reports.length && this.gen === gen) {
          this.report(gen.reports.shift()!);
          progressed = true;
        }
      }
      await settle();
      this.check();
      const idle = !progressed && this.gates.every((q) => !q.length) &&
        (!moves || !this.moves.length) && (!this.gen || this.gen.busy === 0) &&
        (!saves || !this.releases.size);
      if (idle) {
        // Every move has settled: a write still waiting would wait for ever (a vCPU hung).
        const stuck = moves ? [...this.waitIn.keys()] : [];
        if (stuck.length) {
          this.fail(`writes of ${stuck} wait for a page-in that never comes`, "model");
        }
        return;
      }
    }
    this.fail("the model does not settle", "model");
  }
}
