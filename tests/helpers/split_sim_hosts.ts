/**
 * The hosts of the split checkpoint simulation, in one process: main's memory and its pager (page
 * in, page out, move across, release, copy-on-write protection), the sub-hosts' page stores and
 * their side of a checkpoint (the real SubSaver), and fragments. Every message, page transfer and
 * disk write waits on the scheduler, so it can put any of them before any other. Page contents are
 * version numbers (the guest never stores one twice), written into the first word of a page where a
 * page's bytes are asked for.
 */
import { DirtyTracker } from "../../src/memory/dirty_tracker.ts";
import { MAIN, PageOwnership } from "../../src/paging/ownership.ts";
import type { PageOutSaver } from "../../src/paging/remote_pager.ts";
import { ALL_RULES } from "../../src/paging/save_ledger.ts";
import type { MainFragmentIo, SplitSaveIo, SubSaveLink } from "../../src/paging/split_session.ts";
import { SaveSessionError } from "../../src/paging/save_sessions.ts";
import { SubSaver } from "../../src/paging/sub_saver.ts";
import { type Scheduler, SimFault } from "./sim_scheduler.ts";
import { type SimFragment, type SimSession, SimSub, VM } from "./split_sim_store.ts";
import { PAGE_SIZE as PAGE } from "../../src/accel/accel.ts";

/** Knobs of a simulated cluster. */
export interface SimConfig {
  pages: number;
  subs: number;
  /** Pages per SubSaver batch and per main batch: small, so a save spans several. */
  batch: number;
  /** Sub-host 1 starts with pages 0 and 1 only (a host whose every page may leave). */
  skew: boolean;
}

/** Counts of what the simulated pager did. */
export interface PagerCounts {
  pageIns: number;
  pageOuts: number;
  across: number;
  failedMoves: number;
  writes: number;
  faultsOnMoving: number;
}

/** Main, its pager and the sub-hosts of one simulated split VM. */
export class SimCluster {
  readonly own: PageOwnership;
  /** Guest-visible contents of every page (what a restore must give back). */
  readonly logical: Int32Array;
  /** Main's memory, meaningful where `present`. */
  readonly mem: Int32Array;
  readonly present: Uint8Array;
  readonly subs: SimSub[] = [];
  readonly tracker: DirtyTracker;
  readonly counts: PagerCounts = {
    pageIns: 0,
    pageOuts: 0,
    across: 0,
    failedMoves: 0,
    writes: 0,
    faultsOnMoving: 0,
  };
  /** Version of each page's last write (0: never written). */
  readonly lastWrite: Int32Array;
  version = 0;
  paused = false;
  moves = 0;
  saver?: PageOutSaver;
  /** A request arriving after its caller gave up failed for a reason it must not. */
  lateError?: unknown;
  #log: Uint8Array;
  #protected = new Set<number>();
  #wpHook?: (g: number) => void;
  #lock: Promise<unknown> = Promise.resolve();

  constructor(readonly cfg: SimConfig, readonly sched: Scheduler) {
    const { pages, subs } = cfg, rng = sched.rng;
    const others = [MAIN, ...Array.from({ length: subs - 1 }, (_, k) => k + 2)];
    this.own = new PageOwnership(
      pages,
      subs + 1,
      (g) => !cfg.skew ? rng.int(subs + 1) : g < 2 ? 1 : rng.pick(others),
    );
    this.logical = new Int32Array(pages);
    this.lastWrite = new Int32Array(pages);
    this.mem = new Int32Array(pages);
    this.present = new Uint8Array(pages);
    this.subs.push(new SimSub(MAIN, 0));
    for (let s = 1; s <= subs; s++) this.subs.push(new SimSub(s, pages));
    for (let g = 0; g < pages; g++) {
      const h = this.own.holderOf(g);
      if (h !== MAIN) this.subs[h].held[g] = 1;
    }
    this.#log = new Uint8Array(Math.ceil(pages / 64) * 8);
    this.tracker = new DirtyTracker(pages, () => {
      const bits = this.#log;
      this.#log = new Uint8Array(bits.length);
      return bits;
    });
  }

  #hop(label: string, failable = true): Promise<void> {
    return this.sched.wait(label, failable);
  }

  /** A sub-host added (one replacing another); pages reach it by later page-outs and moves. */
  addSub(): number {
    const s = this.own.addHost();
    this.subs.push(new SimSub(s, this.cfg.pages));
    this.sched.note(`sub-host ${s} added`);
    return s;
  }

  // --- the guest --------------------------------------------------------------------------------

  /**
   * The guest writes `g`: on main, after its copy-on-write hook if protected; elsewhere it faults
   * (a page-in starts, or it waits for the move under way). Returns false if it could not write.
   */
  write(g: number): boolean {
    if (this.paused) return false;
    if (this.own.holderOf(g) !== MAIN || this.own.isMoving(g)) {
      if (this.own.isMoving(g)) this.counts.faultsOnMoving++;
      else void this.pageIn([g]);
      return false;
    }
    if (this.#protected.delete(g)) this.#wpHook?.(g);
    const v = ++this.version;
    this.mem[g] = this.logical[g] = this.lastWrite[g] = v;
    this.present[g] = 1;
    this.#log[g >> 3] |= 1 << (g & 7);
    this.counts.writes++;
    this.sched.note(`guest writes ${g} = ${v}`);
    return true;
  }

  // --- the pager --------------------------------------------------------------------------------

  /** Runs `fn` while no page-out can take pages from main's memory (RemotePager.withMemory). */
  withMemory<T>(fn: () => Promise<T>): Promise<T> {
    const p = this.#lock.then(fn);
    this.#lock = p.catch(() => {});
    return p;
  }

  /** Main's copy of `g` as a sub-host stores it, or as a fragment records it. */
  mainValue(g: number): number {
    return this.present[g] ? this.mem[g] : 0;
  }

  #sub(s: number, what: string): SimSub {
    const sub = this.subs[s];
    if (!sub) throw this.sched.failure(`${what}: no sub-host ${s}`);
    return sub;
  }

  /** The sub-host's side of a page leaving it (GET or RELEASE): its saver saves owed pages first. */
  async #leaving(sub: SimSub, gfns: number[]) {
    const s = sub.session;
    try {
      await s?.saver.beforeLeaving(gfns);
    } catch (e) {
      s!.failed ??= (e as Error).message;
    }
  }

  /** Sends a RELEASE or PUT on `sub`'s bulk channel, handled after those sent before it. */
  #onChannel(sub: SimSub, label: string, fail: boolean, fn: () => Promise<void>): Promise<void> {
    const p = sub.channel.then(async () => {
      await this.#hop(label, fail);
      await fn();
    });
    sub.channel = p.catch(() => {});
    return p;
  }

  /** Pages `gfns` (all on one sub-host, idle) are paged in; a failed GET leaves them there. */
  async pageIn(gfns: number[]): Promise<void> {
    const own = this.own, from = own.holderOf(gfns[0]), sub = this.#sub(from, "page-in");
    for (const g of gfns) own.beginIn(g);
    this.moves++;
    try {
      await this.#hop(`GET ${gfns} from ${from}`);
      await this.#leaving(sub, gfns);
      for (const g of gfns) {
        if (!sub.held[g]) throw this.sched.failure(`sub-host ${from} asked for ${g} it lacks`);
      }
      const data = gfns.map((g) => sub.bytes[g]);
      await this.#hop(`${from} sends ${gfns}`);
      gfns.forEach((g, i) => {
        this.mem[g] = data[i];
        this.present[g] = 1;
        own.endIn(g);
        sub.unsent.add(g);
      });
      this.counts.pageIns += gfns.length;
      void this.#release(sub, gfns);
    } catch (e) {
      if (!(e instanceof SimFault)) throw e;
      for (const g of gfns) own.abort(g);
      this.counts.failedMoves++;
    } finally {
      this.moves--;
    }
  }

  /** Tells `sub` it no longer holds `gfns`, unless a PUT of them went out first. */
  #release(sub: SimSub, gfns: number[]): Promise<void> {
    return this.#onChannel(sub, `RELEASE ${gfns} at ${sub.index}`, false, async () => {
      const mine = gfns.filter((g) => sub.unsent.delete(g));
      await this.#leaving(sub, mine);
      for (const g of mine) sub.held[g] = 0;
    });
  }

  /**
   * Up to `n` of main's idle pages are paged out to sub-host `to`: copied and punched at once,
   * saved by the checkpoint first if they must be (rule 2), then PUT; a failure puts them back.
   */
  async pageOut(pick: number[], to: number): Promise<void> {
    const own = this.own, sub = this.#sub(to, "page-out");
    const gfns = await this.withMemory(() => {
      const out = pick.filter((g) => own.holderOf(g) === MAIN && !own.isMoving(g));
      for (const g of out) {
        own.beginOut(g, to);
        this.mem[g] = this.mainValue(g);
        this.present[g] = 0;
        if (this.#wpHook) this.#protected.delete(g);
      }
      return Promise.resolve(out);
    });
    if (!gfns.length) return;
    this.moves++;
    const data = new Uint8Array(gfns.length * PAGE);
    const view = new DataView(data.buffer);
    gfns.forEach((g, i) => view.setInt32(i * PAGE, this.mem[g], true));
    const putBack = () => {
      for (const g of gfns) {
        this.present[g] = 1;
        own.abort(g);
      }
      this.counts.failedMoves++;
    };
    try {
      try {
        await this.saver?.leavingMain(gfns, data);
      } catch (e) {
        if (!(e instanceof SimFault)) throw e;
        putBack();
        return;
      }
      for (const g of gfns) sub.unsent.delete(g);
      try {
        await this.#onChannel(sub, `PUT ${gfns} to ${to}`, true, async () => {
          // pages.ts: a page still held here is saved first if owed, before it is replaced.
          await this.#leaving(sub, gfns.filter((g) => sub.held[g]));
          gfns.forEach((g, i) => {
            sub.bytes[g] = view.getInt32(i * PAGE, true);
            sub.held[g] = 1;
            sub.session?.arrived?.add(g);
          });
        });
        await this.#hop(`${to} took ${gfns}`);
      } catch (e) {
        if (!(e instanceof SimFault)) throw e;
        putBack();
        return;
      }
      for (const g of gfns) own.endOut(g);
      this.counts.pageOuts += gfns.length;
    } finally {
      this.moves--;
    }
  }

  /** Page `g` moves from its sub-host to sub-host `to` (RemotePager.across). */
  async across(g: number, to: number): Promise<void> {
    const own = this.own;
    // A move begins under the memory lock, as a page-out does (RemotePager.across).
    const from = await this.withMemory(() => {
      if (own.holderOf(g) === MAIN || own.isMoving(g) || own.holderOf(g) === to) {
        return Promise.resolve(-1);
      }
      own.beginAcross(g, to);
      this.moves++;
      return Promise.resolve(own.holderOf(g));
    });
    if (from < 0) return;
    const src = this.#sub(from, "move across"), dst = this.#sub(to, "move across");
    try {
      await this.#hop(`GET ${g} from ${from} for ${to}`);
      await this.#leaving(src, [g]);
      const v = src.bytes[g];
      await this.#hop(`${from} sends ${g}`);
      dst.unsent.delete(g);
      await this.#onChannel(dst, `PUT ${g} to ${to}`, true, async () => {
        if (dst.held[g]) await this.#leaving(dst, [g]);
        dst.bytes[g] = v;
        dst.held[g] = 1;
        dst.session?.arrived?.add(g);
      });
      await this.#hop(`${to} took ${g}`);
      own.endAcross(g);
      this.counts.across++;
      src.unsent.add(g);
      void this.#release(src, [g]);
    } catch (e) {
      if (!(e instanceof SimFault)) throw e;
      own.abort(g);
      this.counts.failedMoves++;
    } finally {
      this.moves--;
    }
  }

  /** Where every page is agrees with the ownership table, and holds what the guest wrote. */
  audit(): void {
    this.own.check();
    for (let g = 0; g < this.cfg.pages; g++) {
      const h = this.own.holderOf(g);
      const v = h === MAIN ? this.mainValue(g) : this.subs[h].held[g] ? this.subs[h].bytes[g] : NaN;
      if (v !== this.logical[g]) {
        throw this.sched.failure(
          `page ${g} on host ${h} is ${v}, the guest wrote ${this.logical[g]}`,
        );
      }
    }
  }

  // --- a checkpoint's I/O -------------------------------------------------------------------------

  /**
   * A request to sub-host `s` and its answer, each a message that may fail; a request whose caller
   * gave up (a deadline) may still arrive later.
   */
  async #call<T>(s: number, what: string, fn: () => Promise<T> | T): Promise<T> {
    try {
      await this.#hop(`${what} -> ${s}`);
    } catch (e) {
      if (this.sched.rng.chance(0.5)) {
        this.sched.wait(`${what} -> ${s}, late`, false, this.sched.rng.int(2000)).then(fn).catch(
          (late) => {
            if (!(late instanceof SaveSessionError || late instanceof SimFault)) {
              this.lateError ??= late;
            }
          },
        );
      }
      throw e;
    }
    const r = await fn();
    await this.#hop(`${s} answers ${what}`);
    return r;
  }

  /** Sub-host `s` begins its part of checkpoint `id`, writing fragment `frag` (PageSaves). */
  beginSub(s: number, frag: SimFragment, id: string): Promise<void> {
    const sub = this.subs[s];
    return this.#call(s, `begin ${id}`, () => {
      sub.sessions.mayBegin(id);
      sub.sessions.end(VM);
      const session: SimSession = {
        id,
        frag,
        received: 0,
        saver: new SubSaver(
          {
            holds: (g) => sub.held[g] === 1,
            write: (gfns) => {
              // The store is read when the write is issued (PageSaves reads it, then appends).
              const vs = gfns.map((g) => sub.bytes[g]);
              for (const g of gfns) if (session.arrived?.has(g)) session.received++;
              return frag.append(gfns, () => vs);
            },
          },
          ALL_RULES,
          this.cfg.batch,
        ),
      };
      sub.sessions.set(VM, session);
    });
  }

  /** Sub-host `s` finishes its fragment of checkpoint `id` (PageSaves' pages.save.finish). */
  finishSub(s: number, id: string): Promise<void> {
    return this.#call(s, `finish ${id}`, () => this.#session(s, id).frag.finish());
  }

  /** Sub-host `s`'s session of checkpoint `id`, as PageSaves looks it up for a request. */
  #session(s: number, id: string): SimSession {
    try {
      return this.subs[s].sessions.get(VM, id);
    } catch (e) {
      // Saving failed there after an injected failure: the checkpoint fails as it should.
      if (e instanceof SaveSessionError && e.kind === "failed") throw new SimFault(e.message);
      throw e;
    }
  }

  /** Sub-host `s` is told checkpoint `id` is aborted (a lost message is not retried). */
  abortSub(s: number, id: string): Promise<void> {
    return this.#call(s, `abort ${id}`, () => void this.subs[s].sessions.abort(VM, id)).catch(
      () => {},
    );
  }

  /** Sub-host `s` ends checkpoint `id`, committed. */
  endSub(s: number, id: string): void {
    this.subs[s].sessions.end(VM, id);
  }

  /**
   * Main's view of sub-host `s` during checkpoint `id`: a request of another checkpoint is refused,
   * as PageSaves refuses it.
   */
  #link(s: number, id: string): SubSaveLink {
    const session = () => this.#session(s, id);
    const call = <T>(what: string, fn: () => Promise<T> | T) => this.#call(s, what, fn);
    return {
      index: s,
      host: `sub${s}`,
      owe: (gfns) =>
        call(`owe ${gfns}`, () => {
          const x = session();
          x.arrived = new Set();
          x.saver.owe(gfns);
        }),
      point: () => call("point", () => void (session().arrived = new Set())),
      save: (gfns) =>
        call(`save ${gfns}`, async () => {
          const x = session(), before = x.received;
          const saved = await x.saver.save(gfns);
          return { saved, received: x.received - before };
        }),
    };
  }

  /** The I/O of checkpoint `id` writing main's fragment `frag`, with sub-hosts `subs`. */
  io(frag: SimFragment, subs: number[], id: string): SplitSaveIo {
    const page = (v: number) => {
      const p = new Uint8Array(PAGE);
      new DataView(p.buffer).setInt32(0, v, true);
      return p;
    };
    const fragment: MainFragmentIo = {
      appendMemory: (gfns) => frag.append(gfns, () => gfns.map((g) => this.mainValue(g))),
      appendZeros: (gfns) => frag.append(gfns, () => gfns.map(() => 0)),
      appendPages: (gfns, data, offsets) => {
        const view = new DataView(data.buffer, data.byteOffset, data.byteLength);
        const vs = gfns.map((_, i) => view.getInt32(offsets ? offsets[i] : i * PAGE, true));
        return frag.append(gfns, () => vs);
      },
      finish: () => Promise.reject(new Error("the simulation finishes fragments itself")),
      abort: () => Promise.resolve(),
    };
    return {
      ownership: this.own,
      pages: this.cfg.pages,
      subs: subs.map((s) => this.#link(s, id)),
      fragment,
      withMemory: (fn) => this.withMemory(fn),
      present: () => this.present.slice(),
      readPage: (g) => page(this.mainValue(g)),
      protect: (runs, on) => {
        for (const [first, n] of runs) {
          for (let g = first; g < first + n; g++) {
            if (on) this.#protected.add(g);
            else this.#protected.delete(g);
          }
        }
      },
      onWriteProtected: (fn) => this.#wpHook = fn,
    };
  }
}
