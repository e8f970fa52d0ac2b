/**
 * The pages of a sub-host's page store still in their source (a lazy load's checkpoint): which
 * they are, the source they are read from, and their record on disk (`lazy_record.ts`), written
 * through as pages come in, so an agent killed mid-load picks the load up again.
 */
import { existsSync } from "node:fs";
import { writeFileAtomic } from "../ffi/atomic_file.ts";
import { PageStoreError } from "./page_index.ts";
import {
  decodeLazyHeader,
  decodeLazyRecord,
  encodeLazyRecord,
  encodeLazySlot,
  LAZY_HEADER,
  lazyLayout,
  slotOffset,
} from "./lazy_record.ts";

/**
 * Where the pages of a lazy load still are (a checkpoint's fragments): read on first request and by
 * a background pass, so the store answers for them before their bytes are here.
 */
export interface PageSource {
  /** Reads `gfns` into `into` (one page after another), each checked whole, or throws. */
  read(gfns: number[], into: Uint8Array<ArrayBuffer>): void;
  /** Lets go of the source's files. */
  close(): void;
}

/** The largest VM a record may describe (as `pages` arguments are bounded). */
const MAX_PAGES = 1 << 28;

function writeFull(f: Deno.FsFile, at: number, from: Uint8Array) {
  f.seekSync(at, Deno.SeekMode.Start);
  for (let o = 0; o < from.length;) o += f.writeSync(from.subarray(o));
}

/** The page count a record at `path` is of, its header checked; undefined when there is none. */
export function lazyRecordPages(path: string): number | undefined {
  if (!existsSync(path)) return undefined;
  using f = Deno.openSync(path, { read: true });
  const h = new Uint8Array(LAZY_HEADER);
  f.readSync(h);
  return decodeLazyHeader(path, h, f.statSync().size, MAX_PAGES).pages;
}

/** Pages still in a source, with the record that outlives the agent. */
export class PendingPages {
  readonly #path: string;
  readonly #pages: number;
  readonly #bits: Uint8Array;
  readonly #describe: Uint8Array;
  readonly #record: Deno.FsFile;
  readonly #slotAt: (seq: number) => number;
  #seq: number;
  #count = 0;
  #cursor = 0;
  #source?: PageSource;
  #closed = false;

  private constructor(
    path: string,
    pages: number,
    bits: Uint8Array,
    describe: Uint8Array,
    seq: number,
    source?: PageSource,
  ) {
    this.#path = path;
    this.#seq = seq;
    const layout = lazyLayout(pages, describe.length);
    this.#slotAt = (n) => slotOffset(layout, n);
    this.#pages = pages;
    this.#bits = bits;
    this.#describe = describe;
    this.#source = source;
    for (let g = 0; g < pages; g++) if (this.has(g)) this.#count++;
    this.#record = Deno.openSync(path, { write: true });
  }

  /**
   * Records `gfns` of a VM of `pages` pages as still in `source` (`describe` says which source, for
   * an agent that picks the load up again) at `path`, replacing any record there.
   */
  static create(
    path: string,
    pages: number,
    gfns: ArrayLike<number>,
    source: PageSource,
    describe: Uint8Array,
  ): PendingPages {
    const bits = new Uint8Array(Math.ceil(pages / 8));
    for (let i = 0; i < gfns.length; i++) bits[gfns[i] >> 3] |= 1 << (gfns[i] & 7);
    writeFileAtomic(path, encodeLazyRecord({ pages, pending: bits, source: describe }), {
      // One name, so a kill in the middle leaves nothing the next record does not replace.
      tmp: `${path}.tmp`,
    });
    return new PendingPages(path, pages, bits, describe, 0, source);
  }

  /**
   * The record at `path` of a load a stopped agent left, for a VM of `pages` pages, without the
   * pages `held` says are in the store already (they came in, or main put them, after the bit was
   * last written); undefined when there is none or nothing is left of it (then it is removed).
   */
  static recover(
    path: string,
    pages: number,
    held: (g: number) => boolean,
  ): PendingPages | undefined {
    if (!existsSync(path)) return undefined;
    const bytes = Deno.readFileSync(path);
    const r = decodeLazyRecord(path, bytes, MAX_PAGES);
    if (r.pages !== pages) {
      throw new PageStoreError(
        `${path}: records a load of ${r.pages} pages, the store has ${pages}`,
      );
    }
    for (let g = 0; g < pages; g++) if (held(g)) r.pending[g >> 3] &= ~(1 << (g & 7));
    const p = new PendingPages(path, pages, r.pending, r.source, r.seq);
    p.#writeThrough();
    if (p.#count) return p;
    p.finish();
    return undefined;
  }

  /** Pages still in the source. */
  get count(): number {
    return this.#count;
  }

  /** The source's description as recorded; with `attached` false, nobody reads from it yet. */
  get describe(): Uint8Array {
    return this.#describe;
  }

  /** True once a source is there to read from. */
  get attached(): boolean {
    return this.#source !== undefined;
  }

  /** True when page `g` is still in the source. */
  has(g: number): boolean {
    return (this.#bits[g >> 3] & (1 << (g & 7))) !== 0;
  }

  /** Sets in `bitmap` the bits of the pages still in the source. */
  orInto(bitmap: Uint8Array): void {
    for (let i = 0; i < bitmap.length; i++) bitmap[i] |= this.#bits[i];
  }

  /** Reads from `source` from now on (a damaged copy replaced, or a load picked up); the old one is closed. */
  attach(source: PageSource): void {
    if (this.#closed) {
      source.close();
      return;
    }
    this.#source?.close();
    this.#source = source;
  }

  /** Up to `max` pages still in the source, from where the last call left off. */
  next(max: number): number[] {
    const out: number[] = [];
    for (let n = 0; n < this.#pages && out.length < max; n++) {
      const g = (this.#cursor + n) % this.#pages;
      if (this.has(g)) out.push(g);
    }
    if (out.length) this.#cursor = (out[out.length - 1] + 1) % this.#pages;
    return out;
  }

  /** Those of `gfns` still in the source, ascending. */
  among(gfns: ArrayLike<number>): number[] {
    const out: number[] = [];
    for (let i = 0; i < gfns.length; i++) if (this.has(gfns[i])) out.push(gfns[i]);
    return out.sort((a, b) => a - b);
  }

  /** Reads `gfns` (all still in the source) into `into`; throws when there is no source yet. */
  read(gfns: number[], into: Uint8Array<ArrayBuffer>): void {
    if (!this.#source) throw new Error("the checkpoint they are in is not open");
    this.#source.read(gfns, into);
  }

  /** Takes `gfns` off the record (in the store now, put by main, or released to it). */
  clear(gfns: ArrayLike<number>): void {
    let changed = false;
    for (let i = 0; i < gfns.length; i++) {
      const g = gfns[i];
      if (!this.has(g)) continue;
      this.#bits[g >> 3] &= ~(1 << (g & 7));
      this.#count--;
      changed = true;
    }
    if (changed) this.#writeThrough();
  }

  /**
   * Writes the bitmap into the slot of the older sequence number, in one piece: a kill that cuts it
   * short leaves the other slot, one update older, whose pages are either in the index now (it
   * wins) or were released in a call main never had an answer to (main sends it again).
   */
  #writeThrough() {
    this.#seq++;
    writeFull(this.#record, this.#slotAt(this.#seq), encodeLazySlot(this.#seq, this.#bits));
  }

  /** The load is over: the source and the record go. */
  finish(): void {
    this.close();
    try {
      Deno.removeSync(this.#path);
    } catch {
      // Already gone.
    }
  }

  /** Lets go of the source and the record's file (the record stays, for an agent started again). */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#source?.close();
    this.#source = undefined;
    this.#record.close();
  }
}
