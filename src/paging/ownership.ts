/**
 * Which host holds each page of a split VM. There is one holder per page at every instant: a page is
 * moved by `beginIn`/`beginOut`, during which its old holder still owns it, and changes hands only
 * at `endIn`/`endOut`; a failed move leaves it where it was. Every transition checks its
 * precondition, so a page-in and a page-out of the same page can never both be under way.
 */

/** Index of the main host; sub-hosts are 1..n. */
export const MAIN = 0;

const MOVING_NONE = 0, MOVING_IN = 1, MOVING_OUT = 2, MOVING_ACROSS = 3;

/** A transition that would give a page two holders or none. */
export class OwnershipError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "OwnershipError";
  }
}

/** The holder table of one split VM. */
export class PageOwnership {
  private readonly holders: Uint8Array;
  private readonly moving: Uint8Array;
  private readonly target: Uint8Array;
  private readonly perHost: number[];

  constructor(
    /** Pages of guest memory. */ readonly pages: number,
    /** Hosts: main plus sub-hosts (grows with `addHost`). */ public hosts: number,
    initial: (gfn: number) => number,
  ) {
    if (hosts < 1 || hosts > 255) throw new OwnershipError(`${hosts} hosts: use 1 to 255`);
    this.holders = new Uint8Array(pages);
    this.moving = new Uint8Array(pages);
    this.target = new Uint8Array(pages);
    this.perHost = new Array(hosts).fill(0);
    for (let g = 0; g < pages; g++) {
      const h = initial(g);
      if (!(h >= 0 && h < hosts)) throw new OwnershipError(`page ${g}: no host ${h}`);
      this.holders[g] = h;
      this.perHost[h]++;
    }
  }

  /** The host holding `gfn` now (during a move: the one it is leaving). */
  holderOf(gfn: number): number {
    return this.holders[gfn];
  }

  /** True while `gfn` is being paged in or out. */
  isMoving(gfn: number): boolean {
    return this.moving[gfn] !== MOVING_NONE;
  }

  /** True while `gfn` is being paged out from main. */
  isMovingOut(gfn: number): boolean {
    return this.moving[gfn] === MOVING_OUT;
  }

  /** True while `gfn` is leaving a host for a sub-host (paged out, or moved between sub-hosts). */
  isLeaving(gfn: number): boolean {
    return this.moving[gfn] === MOVING_OUT || this.moving[gfn] === MOVING_ACROSS;
  }

  /** Adds a sub-host (e.g. one replacing another); returns its index. */
  addHost(): number {
    if (this.hosts >= 255) throw new OwnershipError("no room for another host (255 at most)");
    this.perHost.push(0);
    return this.hosts++;
  }

  /** A move of `gfn` from its sub-host to sub-host `to` starts (a sub-host being replaced). */
  beginAcross(gfn: number, to: number): void {
    this.expectIdle(gfn, "move across");
    const from = this.holders[gfn];
    if (from === MAIN) throw new OwnershipError(`move across of gfn ${gfn}: main holds it`);
    if (!(to > MAIN && to < this.hosts) || to === from) {
      throw new OwnershipError(`move across of gfn ${gfn}: bad target sub-host ${to}`);
    }
    this.moving[gfn] = MOVING_ACROSS;
    this.target[gfn] = to;
  }

  /** The move of `gfn` between sub-hosts completed: its target holds it. */
  endAcross(gfn: number): void {
    this.expectMoving(gfn, MOVING_ACROSS, "end move across");
    this.hand(gfn, this.target[gfn]);
  }

  /** Pages each host holds (index = host). */
  counts(): number[] {
    return [...this.perHost];
  }

  /** A page-in of `gfn` to main starts; it must be held by a sub-host and not moving. */
  beginIn(gfn: number): void {
    this.expectIdle(gfn, "page in");
    if (this.holders[gfn] === MAIN) {
      throw new OwnershipError(`page in of gfn ${gfn}: main already holds it`);
    }
    this.moving[gfn] = MOVING_IN;
  }

  /** The page-in of `gfn` completed: main holds it. */
  endIn(gfn: number): void {
    this.expectMoving(gfn, MOVING_IN, "end page in");
    this.hand(gfn, MAIN);
  }

  /** A page-out of `gfn` from main to sub-host `to` starts. */
  beginOut(gfn: number, to: number): void {
    this.expectIdle(gfn, "page out");
    if (this.holders[gfn] !== MAIN) {
      throw new OwnershipError(
        `page out of gfn ${gfn}: main does not hold it (host ${this.holders[gfn]} does)`,
      );
    }
    if (!(to > MAIN && to < this.hosts)) {
      throw new OwnershipError(`page out of gfn ${gfn}: no sub-host ${to}`);
    }
    this.moving[gfn] = MOVING_OUT;
    this.target[gfn] = to;
  }

  /** The page-out of `gfn` completed: its target sub-host holds it. */
  endOut(gfn: number): void {
    this.expectMoving(gfn, MOVING_OUT, "end page out");
    this.hand(gfn, this.target[gfn]);
  }

  /** The sub-host a page-out of `gfn` is going to. */
  outTarget(gfn: number): number {
    this.expectMoving(gfn, MOVING_OUT, "page-out target");
    return this.target[gfn];
  }

  /** A move of `gfn` failed: its holder keeps it. */
  abort(gfn: number): void {
    if (!(Number.isInteger(gfn) && gfn >= 0 && gfn < this.pages)) {
      throw new OwnershipError(`abort: no gfn ${gfn}`);
    }
    if (this.moving[gfn] === MOVING_NONE) {
      throw new OwnershipError(`abort of gfn ${gfn}: it is not moving`);
    }
    this.moving[gfn] = MOVING_NONE;
  }

  /** Checks the table: every page has exactly one holder and the per-host counts agree. */
  check(): { counts: number[]; moving: number } {
    const counts = new Array(this.hosts).fill(0);
    let moving = 0;
    for (let g = 0; g < this.pages; g++) {
      counts[this.holders[g]]++;
      if (this.moving[g]) moving++;
    }
    for (let h = 0; h < this.hosts; h++) {
      if (counts[h] !== this.perHost[h]) {
        throw new OwnershipError(
          `host ${h} holds ${counts[h]} pages but is counted ${this.perHost[h]}`,
        );
      }
    }
    return { counts, moving };
  }

  private hand(gfn: number, to: number) {
    this.perHost[this.holders[gfn]]--;
    this.perHost[to]++;
    this.holders[gfn] = to;
    this.moving[gfn] = MOVING_NONE;
  }

  private expectIdle(gfn: number, what: string) {
    if (!(Number.isInteger(gfn) && gfn >= 0 && gfn < this.pages)) {
      throw new OwnershipError(`${what}: no gfn ${gfn}`);
    }
    if (this.moving[gfn] !== MOVING_NONE) {
      throw new OwnershipError(`${what} of gfn ${gfn}: it is already moving`);
    }
  }

  private expectMoving(gfn: number, kind: number, what: string) {
    if (this.moving[gfn] !== kind) {
      throw new OwnershipError(`${what} of gfn ${gfn}: no such move is under way`);
    }
  }
}
