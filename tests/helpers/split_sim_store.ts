/**
 * The stores of the split checkpoint simulation: fragments, whose last record of a page wins as in
 * a FragmentWriter's file, and a sub-host's page store with its checkpoint sessions.
 */
import type { SaveSessionBase } from "../../src/paging/save_sessions.ts";
import { SaveSessions } from "../../src/paging/save_sessions.ts";
import type { SubSaver } from "../../src/paging/sub_saver.ts";
import type { Scheduler } from "./sim_scheduler.ts";

/** One fragment: the last record of each page wins, in the order records were appended. */
export class SimFragment {
  readonly #pages = new Map<number, { seq: number; v: number }>();
  #seq = 0;
  #failed?: Error;
  /** Records appended, by gfn (more than one: the page was saved again). */
  readonly appends = new Map<number, number>();

  constructor(readonly host: number, readonly sched: Scheduler, readonly label: string) {}

  /**
   * Appends `gfns`: the record is placed now, its contents (`read`) taken when the write reaches
   * the disk, as a FragmentWriter reads guest memory at its flush. A failed write fails every later
   * one (the fragment is lost).
   */
  async append(gfns: number[], read: () => number[]): Promise<void> {
    if (this.#failed) throw this.#failed;
    if (!gfns.length) return;
    const seq = ++this.#seq;
    for (const g of gfns) this.appends.set(g, (this.appends.get(g) ?? 0) + 1);
    try {
      await this.sched.wait(`${this.label} writes ${gfns}`, true);
    } catch (e) {
      this.#failed = e as Error;
      throw e;
    }
    const vs = read();
    gfns.forEach((g, i) => {
      const r = this.#pages.get(g);
      if (!r || r.seq < seq) this.#pages.set(g, { seq, v: vs[i] });
    });
  }

  /** Index, footer and sync: fails if any write did (FragmentWriter keeps its failure). */
  async finish(): Promise<void> {
    if (this.#failed) throw this.#failed;
    await this.sched.wait(`${this.label} finishes`, true);
  }

  /** Records `g` as `v` at once: a page a merge copied from an older fragment of this host. */
  adopt(g: number, v: number): void {
    this.#pages.set(g, { seq: ++this.#seq, v });
  }

  /** The saved contents of `g` (undefined: none). */
  get(g: number): number | undefined {
    return this.#pages.get(g)?.v;
  }
}

/** The simulated VM's name, under which sub-hosts keep its checkpoint sessions. */
export const VM = "sim";

/** A sub-host's part of one checkpoint. */
export interface SimSession extends SaveSessionBase {
  saver: SubSaver;
  frag: SimFragment;
  arrived?: Set<number>;
  received: number;
}

/** A sub-host: its page store and its part of the checkpoint under way. */
export class SimSub {
  readonly bytes: Int32Array;
  readonly held: Uint8Array;
  /** Released pages not yet sent (a PUT of the page cancels its release). */
  readonly unsent = new Set<number>();
  /** The bulk channel: RELEASE and PUT are handled in the order sent. */
  channel: Promise<unknown> = Promise.resolve();
  /** Its part of the checkpoint under way (one VM per simulation). */
  readonly sessions = new SaveSessions<SimSession>();

  /** The session under way, whichever checkpoint it is. */
  get session(): SimSession | undefined {
    return this.sessions.current(VM);
  }

  constructor(readonly index: number, pages: number) {
    this.bytes = new Int32Array(pages);
    this.held = new Uint8Array(pages);
  }
}
