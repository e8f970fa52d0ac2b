/**
 * The bookkeeping of one parallel checkpoint of a split VM (docs/CONSISTENCY.md): for every page,
 * which fragment holds a copy that is still its content, and which host still owes one. Main's
 * pager and the sub-hosts' savers consult it at every move and every save; the model-based test
 * drives the same object through random interleavings.
 */
import { compressPageMap } from "../ckpt/page_map.ts";
import { MAIN } from "./ownership.ts";

/** No copy of the page is known to hold its content. */
export const NO_COPY = -1;
/** `owes` entry of a page nobody owes. */
const NOBODY = 0;

/**
 * The four consistency rules; each can be switched off only so that the model-based test can
 * prove it catches the bug that leaves.
 */
export interface LedgerRules {
  /** 1: a sub-host saves a page it owes before the page leaves it. */
  saveBeforePageIn: boolean;
  /** 2: main saves a page without a copy before it pages it out. */
  saveBeforePageOut: boolean;
  /** 3: the manifest names the fragment holding the copy, not the page's holder. */
  referenceCopy: boolean;
  /** 4: a write voids a copy wherever it was made, also on a host the page has left. */
  writeVoidsMovedCopy: boolean;
}

/** Every rule on. */
export const ALL_RULES: Readonly<LedgerRules> = {
  saveBeforePageIn: true,
  saveBeforePageOut: true,
  referenceCopy: true,
  writeVoidsMovedCopy: true,
};

/** A copy the ledger cannot account for: the checkpoint would not be the memory of one instant. */
export class ConsistencyError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "ConsistencyError";
  }
}

/** Which copy of each page a checkpoint uses, and who still owes one. */
export class SaveLedger {
  /** Fragment index of each page's copy, or NO_COPY. */
  readonly copy: Int32Array;
  private readonly stamp: Uint32Array;
  private readonly owes: Uint8Array;
  private frozen = false;

  constructor(
    /** Pages of guest memory. */ readonly pages: number,
    /** Fragment index this checkpoint writes on each host (index = host). */
    private readonly fragmentOf: readonly number[],
    /** Copies inherited from the parent generation (fragment index per page), for incrementals. */
    inherited?: Int32Array,
    /** The rules (all on, except in the model test's planted bugs). */
    readonly rules: Readonly<LedgerRules> = ALL_RULES,
  ) {
    this.copy = inherited ? Int32Array.from(inherited) : new Int32Array(pages).fill(NO_COPY);
    this.stamp = new Uint32Array(pages);
    this.owes = new Uint8Array(pages);
  }

  /** Host whose fragment `f` is (undefined: an earlier generation's fragment). */
  private hostOfFragment(f: number): number | undefined {
    const h = this.fragmentOf.indexOf(f);
    return h < 0 ? undefined : h;
  }

  /**
   * The guest wrote `gfns` (seen in the dirty log), which now held by `holderOf`: their copies no
   * longer hold. After a copy-on-write consistency point writes change nothing saved.
   */
  written(gfns: Iterable<number>, holderOf: (g: number) => number): void {
    if (this.frozen) return;
    for (const g of gfns) {
      const f = this.copy[g];
      if (!this.rules.writeVoidsMovedCopy && f !== NO_COPY) {
        const h = this.hostOfFragment(f);
        if (h !== undefined && h !== holderOf(g)) continue;
      }
      this.copy[g] = NO_COPY;
      this.stamp[g]++;
    }
  }

  /** True when `g` has a copy that holds. */
  has(g: number): boolean {
    return this.copy[g] !== NO_COPY;
  }

  /** Pages without a copy. */
  missing(): number {
    let n = 0;
    for (let g = 0; g < this.pages; g++) if (this.copy[g] === NO_COPY) n++;
    return n;
  }

  /**
   * Pages `host` should save now: those it holds (per `idle`, which excludes pages on the move)
   * without a copy; they are marked owed by it.
   */
  claim(host: number, idle: (g: number) => boolean): number[] {
    const out: number[] = [];
    for (let g = 0; g < this.pages; g++) {
      // After a copy-on-write point a page is saved only by the host that held it there.
      if (this.copy[g] === NO_COPY && idle(g) && (!this.frozen || this.owes[g] === host + 1)) {
        this.owes[g] = host + 1;
        out.push(g);
      }
    }
    return out;
  }

  /** Marks `gfns` owed by `host` (a sub-host's list at a copy-on-write consistency point). */
  owe(host: number, gfns: Iterable<number>): void {
    for (const g of gfns) this.owes[g] = host + 1;
  }

  /**
   * The consistency point of a copy-on-write checkpoint: every page without a copy is owed by its
   * holder there, and later writes void nothing (main keeps its pages' old contents aside).
   */
  freeze(holderOf: (g: number) => number): void {
    for (let g = 0; g < this.pages; g++) {
      if (this.copy[g] === NO_COPY) this.owes[g] = holderOf(g) + 1;
    }
    this.frozen = true;
  }

  /** True once `freeze` ran. */
  get isFrozen(): boolean {
    return this.frozen;
  }

  /** True when `host` owes a copy of `g`. */
  owedBy(g: number, host: number): boolean {
    return this.owes[g] === host + 1 && this.copy[g] === NO_COPY;
  }

  /** Stamps of `gfns` as they are read for saving; pass them back to `saved`. */
  ticket(gfns: ArrayLike<number>): Uint32Array {
    const t = new Uint32Array(gfns.length);
    for (let i = 0; i < gfns.length; i++) t[i] = this.stamp[gfns[i]];
    return t;
  }

  /**
   * `host` saved `gfns` as they were when `ticket` was taken: each copy holds unless the guest
   * wrote the page since (before a copy-on-write point).
   */
  saved(host: number, gfns: ArrayLike<number>, ticket: Uint32Array): void {
    const f = this.fragmentOf[host];
    for (let i = 0; i < gfns.length; i++) {
      const g = gfns[i];
      if (!this.frozen && this.stamp[g] !== ticket[i]) continue;
      if (this.frozen && this.copy[g] !== NO_COPY) continue;
      this.copy[g] = f;
      this.owes[g] = NOBODY;
    }
  }

  /**
   * Sub-host `host` answered a save request for `asked` (stamps `ticket`) with `saved`, which may
   * include pages it saved on their way out since its last answer: those count only after a
   * copy-on-write point (before it, main has no ticket for them and saves them where they are).
   * Before the point `ticket` judges an asked page's copy only if the sub-host read the page after
   * it received this request (SubSaver owes every page a request names afresh): a copy made before,
   * on the page's way out, may be older than the ticket. Returns the pages whose copies now stand.
   */
  reported(host: number, asked: ArrayLike<number>, ticket: Uint32Array, saved: number[]): number[] {
    const at = new Map<number, number>();
    for (let i = 0; i < asked.length; i++) at.set(asked[i], i);
    const ok = saved.filter((g) => at.has(g) || this.frozen);
    this.saved(host, ok, Uint32Array.from(ok, (g) => at.has(g) ? ticket[at.get(g)!] : 0));
    return ok.filter((g) => this.copy[g] === this.fragmentOf[host]);
  }

  /**
   * Page `g` is about to leave main: true when main must save it first (rule 2). A page with a copy
   * leaves without one (rule 3: the copy is referenced); after a copy-on-write point only the pages
   * main owes need one. (Rule 1, the sub-hosts' side, is SubSaver's.)
   */
  mustSaveBeforePageOut(g: number): boolean {
    if (this.copy[g] !== NO_COPY || !this.rules.saveBeforePageOut) return false;
    return !this.frozen || this.owedBy(g, MAIN);
  }

  /**
   * The page map of the checkpoint: runs of [first gfn, count, fragment index] over all pages.
   * `holderOf` is the holder at the consistency point (only the planted rule-3 bug uses it).
   */
  pageMap(holderOf: (g: number) => number): Uint32Array {
    const per = new Uint32Array(this.pages);
    for (let g = 0; g < this.pages; g++) {
      const f = this.copy[g];
      if (f === NO_COPY) {
        throw new ConsistencyError(
          `page ${g} has no saved copy (held by host ${
            holderOf(g)
          }); the checkpoint is not committed`,
        );
      }
      per[g] = this.rules.referenceCopy ? f : this.fragmentOf[holderOf(g)];
    }
    return compressPageMap(per);
  }
}
