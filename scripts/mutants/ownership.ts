/**
 * `deno task mutate`'s mutants of src/paging/ownership.ts (PageOwnership);
 * the catalogue's rules are in scripts/mutants.ts.
 */
import type { Mutant } from "../mutants.ts";

const OWN = "src/paging/ownership.ts";

/** Mutants of PageOwnership. */
export const OWNERSHIP_MUTANTS: readonly Mutant[] = [
  {
    id: "own.is-moving-inverted",
    file: OWN,
    find: "return this.moving[gfn] !== MOVING_NONE;",
    replace: "return this.moving[gfn] === MOVING_NONE;",
    description: "isMoving answers the opposite (a lost negation)",
  },
  {
    id: "own.is-leaving-not-across",
    file: OWN,
    find: " || this.moving[gfn] === MOVING_ACROSS;",
    replace: ";",
    description: "isLeaving misses a page moving between sub-hosts",
  },
  {
    id: "own.add-host-index",
    file: OWN,
    find: "return this.hosts++;",
    replace: "return ++this.hosts;",
    description: "addHost returns the index after the new host's",
  },
  {
    id: "own.across-to-itself",
    file: OWN,
    find: "if (!(to > MAIN && to < this.hosts) || to === from) {",
    replace: "if (!(to > MAIN && to < this.hosts)) {",
    description: "a move between sub-hosts to the page's own holder is accepted",
  },
  {
    id: "own.across-recorded-as-out",
    file: OWN,
    find: "this.moving[gfn] = MOVING_ACROSS;",
    replace: "this.moving[gfn] = MOVING_OUT;",
    description: "a move between sub-hosts is recorded as a page-out from main",
  },
  {
    id: "own.out-target-unset",
    file: OWN,
    find: "    this.moving[gfn] = MOVING_OUT;\n    this.target[gfn] = to;",
    replace: "    this.moving[gfn] = MOVING_OUT;",
    description: "a page-out does not record its target: the page lands where its last move went",
  },
  {
    id: "own.in-from-main",
    file: OWN,
    find: "    if (this.holders[gfn] === MAIN) {\n      throw new OwnershipError(`page in",
    replace: "    if (false) {\n      throw new OwnershipError(`page in",
    description: "a page-in of a page main already holds is accepted",
  },
  {
    id: "own.hand-count-kept",
    file: OWN,
    find: "    this.perHost[this.holders[gfn]]--;\n",
    replace: "",
    description: "a page changing hands is not taken off its old holder's count",
  },
  {
    id: "own.hand-still-moving",
    file: OWN,
    find: "    this.holders[gfn] = to;\n    this.moving[gfn] = MOVING_NONE;\n",
    replace: "    this.holders[gfn] = to;\n",
    description: "a completed move leaves the page marked moving",
  },
  {
    id: "own.end-out-to-main",
    file: OWN,
    find:
      '    this.expectMoving(gfn, MOVING_OUT, "end page out");\n    this.hand(gfn, this.target[gfn]);',
    replace: '    this.expectMoving(gfn, MOVING_OUT, "end page out");\n    this.hand(gfn, MAIN);',
    description: "a completed page-out leaves main holding the page",
  },
  {
    id: "own.abort-still-moving",
    file: OWN,
    find: "      throw new OwnershipError(`abort of gfn ${gfn}: it is not moving`);\n    }\n" +
      "    this.moving[gfn] = MOVING_NONE;\n",
    replace: "      throw new OwnershipError(`abort of gfn ${gfn}: it is not moving`);\n    }\n",
    description: "an aborted move leaves the page marked moving",
  },
];
