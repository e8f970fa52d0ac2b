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

const BATCH = 1024;

/** What one sub-host still owes and has saved in the checkpoint under way. */
export class SubSaver {
  private readonly owed = new Set<number>();
  private readonly done = new Set<number>();
  private chain: Promise<unknown> = Promise.resolve();

  constructor(
    private readonly io: SubSaverIo,
    /** Rule 1 can be switched off for the model test's planted bug. */
    private readonly rules: Pick<LedgerRules, "saveBeforePageIn"> = ALL_RULES,
  ) {}

  /** Pages saved so far. */
  get saved(): number {
    return this.done.size;
  }

  /** Runs `fn` after every write before it: the fragment is appended to by one writer at a time. */
  private serial<T>(fn: () => Promise<T>): Promise<T> {
    const p = this.chain.then(fn);
    this.chain = p.catch(() => {});
    return p;
  }

  /** Registers `gfns` as owed (main's list at a consistency point, or for a round). */
  owe(gfns: Iterable<number>): void {
    for (const g of gfns) {
      this.done.delete(g);
      this.owed.add(g);
    }
  }

  /** `gfns` are about to leave this host (GET or RELEASE): owed ones are saved first. */
  beforeLeaving(gfns: ArrayLike<number>): Promise<void> {
    if (!this.rules.saveBeforePageIn) return Promise.resolve();
    const now: number[] = [];
    for (let i = 0; i < gfns.length; i++) if (this.owed.has(gfns[i])) now.push(gfns[i]);
    return now.length ? this.saveNow(now) : Promise.resolve();
  }

  private saveNow(gfns: number[]): Promise<void> {
    return this.serial(async () => {
      const todo = gfns.filter((g) => this.owed.has(g) && this.io.holds(g));
      if (!todo.length) return;
      await this.io.write(todo);
      for (const g of todo) {
        this.owed.delete(g);
        this.done.add(g);
      }
    });
  }

  /**
   * Saves `gfns` (owing them first) in batches; returns those saved, here or before they left. A
   * page that left without being owed (main's request raced with its page-in) is not saved: main
   * saves it where it is now.
   */
  async save(gfns: number[]): Promise<number[]> {
    this.owe(gfns);
    for (let i = 0; i < gfns.length; i += BATCH) await this.saveNow(gfns.slice(i, i + BATCH));
    return gfns.filter((g) => this.done.has(g));
  }

  /** Pages owed and not saved (they left unsaved, or were never reached). */
  unsaved(): number[] {
    return [...this.owed];
  }
}
