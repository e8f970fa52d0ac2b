/**
 * The consistency model's checkpoints (tests/helpers/ledger_model.ts): fragments as they were
 * written, committed chains and their restore, the merge of a chain, and the counts a run prints.
 */
import type { Manifest } from "../../src/ckpt/manifest.ts";
import { mergedManifest, type MergePart } from "../../src/ckpt/merge.ts";
import { coversAll, expandPageMap } from "../../src/ckpt/page_map.ts";
import { PAGE_SIZE as PAGE } from "../../src/accel/accel.ts";
import { generationName } from "../../src/ckpt/store.ts";

/** A failure of the consistency property, of what was saved, or of the model's own bookkeeping. */
export class ModelFailure extends Error {
  constructor(message: string, readonly kind: "restore" | "saved" | "model") {
    super(message);
  }
}

/** A failure the model injects (a disk or network error); the checkpoint under way aborts. */
export class InjectedFailure extends Error {}

/** One fragment: the bytes last written of each page (as a fragment is read back) and how often. */
export interface Fragment {
  /** Host that wrote it. */
  host: number;
  /** Generation (counted over the run) it belongs to. */
  gen: number;
  pages: Map<number, number>;
  writes: Map<number, number>;
}

/** A new empty fragment. */
export function fragment(host: number, gen: number): Fragment {
  return { host, gen, pages: new Map(), writes: new Map() };
}

/** Records `bytes` as page `g`'s copy in `f`. */
export function put(f: Fragment, g: number, bytes: number): void {
  f.pages.set(g, bytes);
  f.writes.set(g, (f.writes.get(g) ?? 0) + 1);
}

/** A committed checkpoint: its chain's fragments, page map, and the memory at its point. */
export interface Committed {
  what: string;
  /** Fragments by index, the parents' first. */
  frags: Fragment[];
  /** Page map runs [first, count, fragment]. */
  map: Uint32Array;
  /** Memory at the consistency point (page contents are version numbers). */
  truth: Int32Array;
  /** Generations in the chain (1 for a full or merged one). */
  length: number;
}

/**
 * Restores `c` from its page map and compares it with the memory at its consistency point;
 * returns what is wrong, or undefined.
 */
export function restoreWrong(c: Committed): string | undefined {
  const pages = c.truth.length;
  if (!coversAll(c.map, pages)) return `${c.what}: the page map does not cover ${pages} pages`;
  const per = expandPageMap(c.map, pages);
  for (let g = 0; g < pages; g++) {
    const frag = c.frags[per[g]];
    if (!frag || !frag.pages.has(g)) return `${c.what}: fragment ${per[g]} has no copy of gfn ${g}`;
    if (frag.pages.get(g) !== c.truth[g]) {
      return `${c.what}: gfn ${g} restored from fragment ${per[g]} is ${frag.pages.get(g)}, ` +
        `at the consistency point it was ${c.truth[g]}`;
    }
  }
}

/**
 * Merges `src`'s chain as src/paging/split_merge.ts does: every host that wrote a fragment of it
 * writes one new fragment holding the pages the page map names in its fragments, and the merged
 * page map (src/ckpt/merge.ts's, on a manifest reduced to what it reads) names those.
 */
export function mergeChain(src: Committed, gen: number): Committed {
  const pages = src.truth.length;
  const names = [...new Set(src.frags.map((f) => f.host))];
  const frags = names.map((h) => fragment(h, gen));
  const per = expandPageMap(src.map, pages);
  for (let g = 0; g < pages; g++) {
    const from = src.frags[per[g]];
    frags[names.indexOf(from.host)].pages.set(g, from.pages.get(g)!);
  }
  const manifest = {
    id: `g${gen}`,
    machine: { spec: { memSize: pages * PAGE } },
    fragments: src.frags.map((f) => ({ host: `h${f.host}` })),
    pageMap: src.map,
    stats: {},
  } as unknown as Manifest;
  const parts = frags.map((f): MergePart => ({
    path: `${generationName(gen)}/h${f.host}.frag`,
    pages: f.pages.size,
    zeroPages: 0,
    dataBytes: 0,
    fileBytes: 0,
    footerCrc: 0,
  }));
  const merged = mergedManifest(manifest, names.map((h) => `h${h}`), parts, gen, `g${gen}`);
  return {
    what: `merged generation ${gen}`,
    frags,
    map: merged.pageMap,
    truth: src.truth,
    length: 1,
  };
}

/** What the runs of one property did, printed at its end. */
export interface Counts {
  interleavings: number;
  pages: number;
  steps: number;
  generations: number;
  incrementals: number;
  aborts: number;
  failedMoves: number;
  merges: number;
  hostsAdded: number;
  waitedWrites: number;
  zeroFills: number;
  bounces: number;
  batches: number;
}

/** Counts at zero. */
export function noCounts(): Counts {
  return {
    interleavings: 0,
    pages: 0,
    steps: 0,
    generations: 0,
    incrementals: 0,
    aborts: 0,
    failedMoves: 0,
    merges: 0,
    hostsAdded: 0,
    waitedWrites: 0,
    zeroFills: 0,
    bounces: 0,
    batches: 0,
  };
}

/** One line of counts. */
export function countsLine(what: string, c: Counts): string {
  return `${what}: ${c.interleavings} interleavings, ${c.steps} steps, ${c.pages} pages, ` +
    `${c.generations} generations committed (${c.incrementals} incremental), ${c.aborts} aborted, ` +
    `${c.merges} merges, ${c.failedMoves} failed moves, ${c.hostsAdded} sub-hosts added, ` +
    `${c.waitedWrites} writes waited for a move, ${c.zeroFills} zero-fills, ${c.bounces} bounces, ` +
    `${c.batches} sub-host saves over several batches`;
}
