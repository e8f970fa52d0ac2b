/**
 * A sub-host's part of a parallel checkpoint: main tells it which of its pages to save (it owes
 * them); it saves them from its own store in batches, and saves an owed page at once when main asks
 * for it (GET) or lets go of it (RELEASE), before it leaves (rule 1 of docs/CONSISTENCY.md).
 */
import { ALL_RULES, type LedgerRules } from "./save_ledger.ts";

/** How the saver reaches its store and fragment. */
export interface SubSaverIo {
  /** True while the store holds `g`. */
  holds(g: number): boolean;
  /** Appends the current contents of `gfns` (all held) to the fragment. */
  write(gfns: number[]): Promise<void>;
}

/** Pages written per fragment append unless the constructor says otherwise. */
const BATCH = 1024;

/** What one sub-host still owes and has saved in the checkpoint under way. */
export class SubSaver {
  private readonly owed = new Set<number>();
  private readonly done = new Set<number>();
  /** Every page written to the fragment: `done` forgets a page a request owes afresh. */
  private readonly wrote = new Set<number>();
  /** Saved before they left and not reported by `save` yet. */
  private readonly leftSaved = new Set<number>();
  private chain: Promise<unknown> = Promise.resolve();
  /** Past a copy-on-write consistency point (main sent its list). */
  private frozen = false;

  constructor(
    private readonly io: SubSaverIo,
    /** Rule 1 can be switched off for the model test's planted bug. */
    private readonly rules: Pick<LedgerRules, "saveBeforePageIn"> = ALL_RULES,
    /** Pages per fragment append: small in the tests, so that a save spans several. */
    private readonly batch = BATCH,
  ) {}

  /** Pages saved so far. */
  get saved(): number {
    return this.wrote.size;
  }

  /** Runs `fn` after every write before it: the fragment is appended to by one writer at a time. */
  private serial<T>(fn: () => Promise<T>): Promise<T> {
    const p = this.chain.then(fn);
    // The chain only orders the writes; `p`'s own caller sees its failure.
    this.chain = p.catch(() => {});
    return p;
  }

  /**
   * Main's list at a copy-on-write consistency point: `gfns` are owed, and from now on every copy
   * this host makes holds.
   */
  owe(gfns: Iterable<number>): void {
    this.need(gfns);
    this.frozen = true;
  }

  /**
   * Registers `gfns` as owed, for main's request or its list at the point. Before a copy-on-write
   * point a copy made before the request arrived does not answer it: main's ticket for the request
   * may be newer than that copy (the page left, was written on main and came back), so the page is
   * saved again, and not reported if it is gone. After the point every copy made since holds (the
   * ledger keeps the first), so a page saved since, on its way out or for an earlier request, is
   * not saved again: that would put contents written after the point in the fragment.
   */
  private need(gfns: Iterable<number>): void {
    for (const g of gfns) {
      if (this.frozen && this.done.has(g)) continue;
      this.done.delete(g);
      this.leftSaved.delete(g);
      this.owed.add(g);
    }
  }

  /** `gfns` are about to leave this host (GET or RELEASE): owed ones are saved first. */
  beforeLeaving(gfns: ArrayLike<number>): Promise<void> {
    if (!this.rules.saveBeforePageIn) return Promise.resolve();
    const now: number[] = [];
    for (let i = 0; i < gfns.length; i++) if (this.owed.has(gfns[i])) now.push(gfns[i]);
    return now.length ? this.saveNow(now, true) : Promise.resolve();
  }

  private saveNow(gfns: number[], leaving = false): Promise<void> {
    return this.serial(async () => {
      const todo = gfns.filter((g) => this.owed.has(g) && this.io.holds(g));
      if (!todo.length) return;
      await this.io.write(todo);
      for (const g of todo) {
        this.owed.delete(g);
        this.done.add(g);
        this.wrote.add(g);
        if (leaving) this.leftSaved.add(g);
      }
    });
  }

  /**
   * Saves `gfns` (owing them first) in batches; returns those saved here, and every page saved on
   * its way out since the last call. A requested page that already left unsaved (main's request
   * raced with its page-in) is owed no more: main saves it where it is now.
   */
  async save(gfns: number[]): Promise<number[]> {
    this.need(gfns);
    for (let i = 0; i < gfns.length; i += this.batch) {
      await this.saveNow(gfns.slice(i, i + this.batch));
    }
    for (const g of gfns) if (this.owed.has(g) && !this.io.holds(g)) this.owed.delete(g);
    const out = new Set(gfns.filter((g) => this.done.has(g)));
    for (const g of this.leftSaved) out.add(g);
    this.leftSaved.clear();
    return [...out].sort((a, b) => a - b);
  }

  /** Pages owed and not saved (they left unsaved, or were never reached). */
  unsaved(): number[] {
    return [...this.owed];
  }
}
