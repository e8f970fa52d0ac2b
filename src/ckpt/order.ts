/**
 * The orders pages are saved and prefetched in, from the epoch each was last seen dirty: saves go
 * coldest first (a page written long ago is unlikely to be written again before the pause), a lazy
 * restore prefetches hottest first (the guest is likely to touch it soon).
 */

/** Pages in `gfns` ordered coldest first (never or longest-ago dirty first). */
export function coldestFirst(gfns: ArrayLike<number>, lastDirty: Uint32Array): number[] {
  return byEpoch(gfns, lastDirty, false);
}

/** Gfns most recently dirty first: the order lazy restore prefetches in. */
export function prefetchOrder(lastDirty: Uint32Array): Uint32Array {
  return Uint32Array.from(byEpoch(allGfns(lastDirty.length), lastDirty, true));
}

/** Every gfn of a VM of `pages` pages, ascending. */
export function allGfns(pages: number): number[] {
  return Array.from({ length: pages }, (_, i) => i);
}

/**
 * Counting sort of gfns by the epoch each was last dirty (epochs are small: one per dirty-log read),
 * gfn order within an epoch kept; linear, so it can run inside a pause.
 */
function byEpoch(gfns: ArrayLike<number>, lastDirty: Uint32Array, newestFirst: boolean): number[] {
  let max = 0;
  for (let i = 0; i < gfns.length; i++) max = Math.max(max, lastDirty[gfns[i]]);
  const start = new Uint32Array(max + 2);
  for (let i = 0; i < gfns.length; i++) {
    const e = lastDirty[gfns[i]];
    start[(newestFirst ? max - e : e) + 1]++;
  }
  for (let e = 1; e < start.length; e++) start[e] += start[e - 1];
  const out = new Array<number>(gfns.length);
  for (let i = 0; i < gfns.length; i++) {
    const e = lastDirty[gfns[i]];
    out[start[newestFirst ? max - e : e]++] = gfns[i];
  }
  return out;
}
