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

/**
 * Peer-given [first, count] runs, checked whole before any is expanded: each inside a VM of `pages`
 * pages and all of them together no more than `pages`, so a few bytes of runs cannot make an agent
 * list more gfns than the VM has. `refuse` makes the caller's error from a one-line reason.
 */
export function checkRuns(
  runs: unknown,
  pages: number,
  refuse: (why: string) => Error,
): { runs: Array<[number, number]>; total: number } {
  if (!Array.isArray(runs)) throw refuse("runs must be a list of [first, count]");
  const out: Array<[number, number]> = [];
  let total = 0;
  for (const run of runs as unknown[]) {
    const [s, n] = Array.isArray(run) && run.length === 2 ? run : [];
    if (!Number.isSafeInteger(s) || !Number.isSafeInteger(n) || s < 0 || n < 0 || s + n > pages) {
      throw refuse(`run [${String(run).slice(0, 80)}] is outside the VM's ${pages} pages`);
    }
    total += n;
    if (total > pages) throw refuse(`runs name more than the VM's ${pages} pages`);
    out.push([s, n]);
  }
  return { runs: out, total };
}

/** The gfns of runs checkRuns accepted, in order. */
export function expandRuns(runs: Array<[number, number]>): number[] {
  const out: number[] = [];
  for (const [s, n] of runs) for (let g = s; g < s + n; g++) out.push(g);
  return out;
}
