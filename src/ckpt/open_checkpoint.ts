/**
 * An opened checkpoint: its manifest and fragments, cross-checked, with the fragment and the index
 * that hold each page, so any page can be read straight from its fragment.
 */
import { join } from "node:path";
import type { GuestMemory } from "../memory/guest_memory.ts";
import { CheckpointFormatError } from "./format.ts";
import { PAGE_FLAG } from "./fragment_layout.ts";
import { FragmentReader } from "./fragment_reader.ts";
import { checkPageMap, type Manifest } from "./manifest.ts";
import { expandPageMap } from "./page_map.ts";
import { resolveCheckpoint } from "./store.ts";
import { PAGE_SIZE } from "../accel/accel.ts";

/** An opened checkpoint: manifest, its fragments, and for each page the fragment and index holding it. */
export class OpenCheckpoint {
  private constructor(
    /** The generation directory. */
    readonly dir: string,
    /** Its manifest. */
    readonly manifest: Manifest,
    /** Readers, by the manifest's fragment index. */
    readonly readers: FragmentReader[],
    /** Fragment index of each gfn. */
    readonly fragmentOf: Uint32Array,
    /** Index of each gfn in its fragment's page table. */
    readonly indexOf: Uint32Array,
  ) {}

  /**
   * Opens and cross-checks a checkpoint: every fragment present, bound to this manifest, holding its
   * pages; with `only`, just those fragments (the rest are on other hosts).
   */
  static open(path: string, only?: ReadonlySet<number>): OpenCheckpoint {
    const { root, dir, manifest } = resolveCheckpoint(path);
    const { pages, perFragment } = checkPageMap(join(dir, "MANIFEST"), manifest);
    const readers: FragmentReader[] = [];
    try {
      for (const [k, f] of manifest.fragments.entries()) {
        if (only && !only.has(k)) {
          readers.push(undefined as unknown as FragmentReader);
          continue;
        }
        const r = FragmentReader.open(join(root, f.path));
        readers.push(r);
        if (r.footerCrc !== f.footerCrc) {
          throw new CheckpointFormatError(
            r.path,
            r.size - 4,
            `fragment does not belong to this checkpoint (footer CRC ${
              r.footerCrc.toString(16)
            }, manifest expects ${f.footerCrc.toString(16)})`,
          );
        }
        // Held against the real file before the per-page tables below are sized by the manifest.
        if (r.pages < perFragment[k]) {
          throw new CheckpointFormatError(
            r.path,
            0,
            `fragment indexes ${r.pages} pages, the manifest's page map gives it ${perFragment[k]}`,
          );
        }
      }
      const fragmentOf = expandPageMap(manifest.pageMap, pages);
      const indexOf = new Uint32Array(pages);
      for (let g = 0; g < pages; g++) {
        const r = readers[fragmentOf[g]];
        if (!r) continue;
        const i = r.find(g);
        if (i < 0) {
          throw new CheckpointFormatError(
            r.path,
            0,
            `page gfn ${g} is missing from this fragment, which the manifest says holds it`,
          );
        }
        indexOf[g] = i;
      }
      return new OpenCheckpoint(dir, manifest, readers, fragmentOf, indexOf);
    } catch (e) {
      // Fragments left out by `only` have no reader: closing them hid the real error (a damaged
      // fragment on a sub-host read as "Cannot read properties of undefined").
      for (const r of readers) r?.close();
      throw e;
    }
  }

  /** Loads pages `gfns` (ascending within each fragment for sequential reads) into guest memory. */
  load(mem: GuestMemory, gfns: ArrayLike<number>): void {
    this.loadTo(gfns, mem.view(), mem.hostAddr);
  }

  /** Loads pages `gfns` into `dst` (at gfn*4096 unless `offsets` is given). */
  loadTo(
    gfns: ArrayLike<number>,
    dst: Uint8Array<ArrayBuffer>,
    base: bigint,
    offsets?: ArrayLike<number>,
  ): void {
    const byFrag = new Map<number, { idx: number[]; off: number[] }>();
    for (let k = 0; k < gfns.length; k++) {
      const g = gfns[k];
      const f = this.fragmentOf[g];
      let e = byFrag.get(f);
      if (!e) byFrag.set(f, e = { idx: [], off: [] });
      e.idx.push(this.indexOf[g]);
      e.off.push(offsets ? offsets[k] : g * PAGE_SIZE);
    }
    for (const [f, e] of byFrag) this.readers[f].readInto(e.idx, dst, base, e.off);
  }

  /** True when page `g` is recorded as zero. */
  isZero(g: number): boolean {
    return (this.readers[this.fragmentOf[g]].pageFlags[this.indexOf[g]] & PAGE_FLAG.ZERO) !== 0;
  }

  /** Gfns whose copy is in one of the fragments `only` names. */
  pagesOf(only: ReadonlySet<number>): number[] {
    const out: number[] = [];
    for (let g = 0; g < this.fragmentOf.length; g++) if (only.has(this.fragmentOf[g])) out.push(g);
    return out;
  }

  /** Closes the fragments. */
  close(): void {
    for (const r of this.readers) r?.close();
  }
}
