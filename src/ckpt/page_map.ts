/** The manifest's page map: runs of [first gfn, count, fragment index] that cover all of RAM. */

/** A map with every page in fragment `frag`. */
export function buildPageMap(pages: number, frag: number): Uint32Array {
  return Uint32Array.of(0, pages, frag);
}

/** Expands a page map to one fragment index per gfn. */
export function expandPageMap(map: Uint32Array, pages: number): Uint32Array {
  const out = new Uint32Array(pages);
  for (let i = 0; i < map.length; i += 3) {
    out.fill(map[i + 2], map[i], Math.min(pages, map[i] + map[i + 1]));
  }
  return out;
}

/** Compresses one fragment index per gfn back into runs. */
export function compressPageMap(perPage: Uint32Array): Uint32Array {
  const out: number[] = [];
  for (let g = 0; g < perPage.length; g++) {
    const n = out.length;
    if (n && out[n - 1] === perPage[g] && out[n - 3] + out[n - 2] === g) out[n - 2]++;
    else out.push(g, 1, perPage[g]);
  }
  return Uint32Array.from(out);
}

/** `map` with the pages `gfns` now held by fragment `frag`. */
export function overlayPageMap(
  map: Uint32Array,
  gfns: ArrayLike<number>,
  frag: number,
): Uint32Array {
  let pages = 0;
  for (let i = 0; i < map.length; i += 3) pages = Math.max(pages, map[i] + map[i + 1]);
  const per = expandPageMap(map, pages);
  for (let i = 0; i < gfns.length; i++) per[gfns[i]] = frag;
  return compressPageMap(per);
}

/** True when the map covers exactly gfns 0..pages-1, each once. */
export function coversAll(map: Uint32Array, pages: number): boolean {
  let next = 0;
  for (let i = 0; i < map.length; i += 3) {
    if (map[i] !== next || map[i + 1] === 0) return false;
    next += map[i + 1];
  }
  return next === pages;
}
