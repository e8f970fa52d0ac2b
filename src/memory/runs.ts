/** Runs of consecutive page numbers, so page I/O is done one contiguous range at a time. */

/** Runs of consecutive values in `xs`, in the given order, as [index of the first, length]. */
export function indexRuns(xs: ArrayLike<number>): Array<[number, number]> {
  const out: Array<[number, number]> = [];
  for (let i = 0; i < xs.length;) {
    let n = 1;
    while (i + n < xs.length && xs[i + n] === xs[i] + n) n++;
    out.push([i, n]);
    i += n;
  }
  return out;
}

/** Sorted runs of the given gfns, as [first gfn, count]. */
export function gfnRuns(gfns: ArrayLike<number>): Array<[number, number]> {
  const s = Array.from(gfns).sort((a, b) => a - b);
  return indexRuns(s).map(([i, n]) => [s[i], n]);
}
