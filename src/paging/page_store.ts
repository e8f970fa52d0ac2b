/**
 * A sub-host's page store: the pages of split VMs this host holds, in two files per VM in the
 * agent's data directory, so they outlive an agent restart. `VM.pages` is a sparse file of the VM's
 * memory; `VM.held` is the index: a header (magic "DCRESPGS", format version, page count, checksums),
 * the bitmap of the pages held, and a CRC-32 of every page. The store serves only pages it holds and
 * whose checksum matches: asked for another, it answers with an error, never with zeros or garbage.
 * Compatibility: a reader opens indexes of its own major version (any minor); a newer major is
 * refused by name. A per-host capacity bounds the pages held across all VMs.
 */
import { join } from "node:path";
import { crc32, hasMagic, magic, writeHead } from "../ckpt/format.ts";
import { indexRuns } from "../memory/runs.ts";
import { PAGE_SIZE } from "../accel/accel.ts";

/** The store refused: full, unknown VM, a page it does not hold, or a damaged file. */
export class PageStoreError extends Error {
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "PageStoreError";
  }
}

/** "DCRESPGS" */
export const STORE_MAGIC: Uint8Array = magic("DCRESPGS");
/** Index format version this build writes. */
export const STORE_VERSION = { major: 1, minor: 0 } as const;
const HEADER = 32;
const ZERO_PAGE_CRC = crc32(new Uint8Array(PAGE_SIZE));

function readFull(f: Deno.FsFile, at: number, into: Uint8Array): number {
  f.seekSync(at, Deno.SeekMode.Start);
  for (let o = 0; o < into.length;) {
    const n = f.readSync(into.subarray(o));
    if (n === null) return o;
    o += n;
  }
  return into.length;
}

function writeFull(f: Deno.FsFile, at: number, from: Uint8Array) {
  f.seekSync(at, Deno.SeekMode.Start);
  for (let o = 0; o < from.length;) o += f.writeSync(from.subarray(o));
}

/** Where the parts of an index of `pages` pages live. */
function indexLayout(pages: number) {
  const bitmap = Math.ceil(pages / 8);
  const crcs = HEADER + Math.ceil(bitmap / 8) * 8;
  return { bitmap, crcs, size: crcs + pages * 4 };
}

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

/** A page could not be read from the store's source (a damaged or lost checkpoint copy). */
export class PageSourceError extends PageStoreError {
  constructor(vm: string, cause: Error) {
    super(`${vm}: a page still in its checkpoint could not be read: ${cause.message}`, { cause });
    this.name = "PageSourceError";
  }
}

/** The pages of one VM held here. */
export class VmPageStore {
  private heldCount = 0;
  /** Held pages whose bytes are still in `#source` (in memory only: the index claims none). */
  #pending?: Uint8Array;
  #pendingCount = 0;
  #source?: PageSource;
  #cursor = 0;
  #closed = false;

  private constructor(
    /** VM name. */ readonly vm: string,
    /** Pages of the VM's memory. */ readonly pages: number,
    private readonly data: Deno.FsFile,
    private readonly index: Deno.FsFile,
    private readonly held: Uint8Array,
    private readonly crcs: Uint32Array,
  ) {
    for (const b of held) this.heldCount += popcount(b);
  }

  /** Opens (or creates) the store of `vm` under `dir`; `fresh` empties it first. */
  static open(dir: string, vm: string, pages: number, fresh = false): VmPageStore {
    Deno.mkdirSync(dir, { recursive: true, mode: 0o700 });
    const indexPath = join(dir, `${vm}.held`);
    const index = Deno.openSync(indexPath, { read: true, write: true, create: true });
    let held: Uint8Array, crcs: Uint32Array;
    let created = false;
    try {
      if (fresh) index.truncateSync(0);
      const size = index.statSync().size;
      if (size === 0) {
        const layout = indexLayout(pages);
        index.truncateSync(layout.size);
        held = new Uint8Array(layout.bitmap);
        crcs = new Uint32Array(pages);
        created = true;
      } else {
        const head = new Uint8Array(HEADER);
        readFull(index, 0, head);
        // The header is checked before the rest is read, so the allocation is this VM's index.
        const bytes = new Uint8Array(decodeIndexHeader(indexPath, head, pages, size));
        if (readFull(index, 0, bytes) < bytes.length) {
          throw indexFlaw(indexPath, "index shrank while it was read");
        }
        ({ held, crcs } = decodeIndex(indexPath, bytes, pages));
      }
    } catch (e) {
      index.close();
      throw e;
    }
    const data = Deno.openSync(join(dir, `${vm}.pages`), { read: true, write: true, create: true });
    if (created) data.truncateSync(0);
    data.truncateSync(pages * PAGE_SIZE);
    const store = new VmPageStore(vm, pages, data, index, held, crcs);
    if (created) store.writeHeader();
    return store;
  }

  /** Pages held (those still in the source too). */
  get heldPages(): number {
    return this.heldCount + this.#pendingCount;
  }

  /** Held pages still to be read from the source. */
  get pendingPages(): number {
    return this.#pendingCount;
  }

  /** True when `gfn` is held here (in the store, or still in its source). */
  holds(gfn: number): boolean {
    return this.#inStore(gfn) || this.#isPending(gfn);
  }

  #inStore(gfn: number): boolean {
    return (this.held[gfn >> 3] & (1 << (gfn & 7))) !== 0;
  }

  #isPending(gfn: number): boolean {
    return !!this.#pending && (this.#pending[gfn >> 3] & (1 << (gfn & 7))) !== 0;
  }

  /** The held bitmap (bit g set: page g is here, or still in the source). */
  bitmap(): Uint8Array {
    const out = this.held.slice();
    if (this.#pending) for (let i = 0; i < out.length; i++) out[i] |= this.#pending[i];
    return out;
  }

  /**
   * Starts holding `gfns` of an empty store with their bytes still in `source` (a lazy load), which
   * the store owns from now on. Until {@link fill} brings a page in, the index does not claim it.
   */
  backWith(gfns: ArrayLike<number>, source: PageSource): void {
    if (this.heldCount || this.#source) {
      throw new PageStoreError(`${this.vm}: a lazy load needs an empty page store`);
    }
    this.#source = source;
    this.#pending = new Uint8Array(this.held.length);
    for (let i = 0; i < gfns.length; i++) {
      const g = gfns[i];
      if (!this.#isPending(g)) this.#pendingCount++;
      this.#pending[g >> 3] |= 1 << (g & 7);
    }
    this.#endSourceIfDone();
  }

  /** Swaps the source of the pages not yet read (a damaged copy replaced); the old one is closed. */
  replaceSource(source: PageSource): void {
    if (!this.#source) {
      source.close();
      return;
    }
    this.#source.close();
    this.#source = source;
  }

  /** Up to `max` pages still in the source, from where the last call left off. */
  nextPending(max: number): number[] {
    const out: number[] = [];
    if (!this.#pending) return out;
    for (let n = 0; n < this.pages && out.length < max; n++) {
      const g = (this.#cursor + n) % this.pages;
      if (this.#isPending(g)) out.push(g);
    }
    if (out.length) this.#cursor = (out[out.length - 1] + 1) % this.pages;
    return out;
  }

  /**
   * Reads those of `gfns` still in the source into the store; throws PageSourceError when the
   * source cannot give them (they stay pending, so a replaced source can be tried again).
   */
  fill(gfns: ArrayLike<number>): void {
    if (!this.#pendingCount) return;
    const todo: number[] = [];
    for (let i = 0; i < gfns.length; i++) if (this.#isPending(gfns[i])) todo.push(gfns[i]);
    if (!todo.length) return;
    todo.sort((a, b) => a - b);
    const buf = new Uint8Array(todo.length * PAGE_SIZE);
    try {
      this.#source!.read(todo, buf);
    } catch (e) {
      throw new PageSourceError(this.vm, e as Error);
    }
    this.put(todo, buf);
  }

  #unpend(gfns: ArrayLike<number>) {
    if (!this.#pendingCount) return;
    for (let i = 0; i < gfns.length; i++) {
      const g = gfns[i];
      if (!this.#isPending(g)) continue;
      this.#pending![g >> 3] &= ~(1 << (g & 7));
      this.#pendingCount--;
    }
    this.#endSourceIfDone();
  }

  #endSourceIfDone() {
    if (this.#pendingCount || !this.#source) return;
    this.#source.close();
    this.#source = undefined;
    this.#pending = undefined;
  }

  /** Starts holding `gfns` of a fresh store (holes in its file: zero pages), a new VM's share. */
  holdZero(gfns: ArrayLike<number>): void {
    for (let i = 0; i < gfns.length; i++) this.crcs[gfns[i]] = ZERO_PAGE_CRC;
    this.writeCrcs(gfns);
    this.mark(gfns, true);
  }

  /** Stores `gfns` with their contents (a page-out). */
  put(gfns: ArrayLike<number>, pages: Uint8Array): void {
    for (const [i, n] of indexRuns(gfns)) {
      writeFull(this.data, gfns[i] * PAGE_SIZE, pages.subarray(i * PAGE_SIZE, (i + n) * PAGE_SIZE));
    }
    for (let i = 0; i < gfns.length; i++) {
      this.crcs[gfns[i]] = crc32(pages.subarray(i * PAGE_SIZE, (i + 1) * PAGE_SIZE));
    }
    this.writeCrcs(gfns);
    this.mark(gfns, true);
    this.#unpend(gfns);
  }

  /**
   * Reads `gfns`, every one of which must be held and intact (a page-in); pages still in the source
   * are read from it first.
   */
  get(gfns: ArrayLike<number>): Uint8Array {
    for (let i = 0; i < gfns.length; i++) {
      if (!this.holds(gfns[i])) {
        throw new PageStoreError(`${this.vm}: gfn ${gfns[i]} is not held on this host`);
      }
    }
    this.fill(gfns);
    const out = new Uint8Array(gfns.length * PAGE_SIZE);
    for (const [i, n] of indexRuns(gfns)) {
      const part = out.subarray(i * PAGE_SIZE, (i + n) * PAGE_SIZE);
      // A hole past the end of what was ever written reads short: those bytes are zeros.
      readFull(this.data, gfns[i] * PAGE_SIZE, part);
    }
    for (let i = 0; i < gfns.length; i++) {
      if (crc32(out.subarray(i * PAGE_SIZE, (i + 1) * PAGE_SIZE)) !== this.crcs[gfns[i]]) {
        throw new PageStoreError(
          `${this.vm}: gfn ${
            gfns[i]
          } is damaged on this host (checksum mismatch); it is not served`,
        );
      }
    }
    return out;
  }

  /** Stops holding `gfns` (main has them now). */
  release(gfns: ArrayLike<number>): void {
    this.mark(gfns, false);
    this.#unpend(gfns);
  }

  private writeCrcs(gfns: ArrayLike<number>) {
    const { crcs } = indexLayout(this.pages);
    const bytes = new Uint8Array(this.crcs.buffer);
    for (const [i, n] of indexRuns(gfns)) {
      const g = gfns[i];
      writeFull(this.index, crcs + g * 4, bytes.subarray(g * 4, (g + n) * 4));
    }
  }

  private mark(gfns: ArrayLike<number>, on: boolean) {
    let lo = Infinity, hi = -1;
    for (let i = 0; i < gfns.length; i++) {
      const g = gfns[i], byte = g >> 3, bit = 1 << (g & 7);
      const was = (this.held[byte] & bit) !== 0;
      if (was === on) continue;
      this.held[byte] ^= bit;
      this.heldCount += on ? 1 : -1;
      lo = Math.min(lo, byte);
      hi = Math.max(hi, byte);
    }
    if (hi < 0) return;
    // Written through, with the header's checksums, so a restarted agent knows what it holds.
    writeFull(this.index, HEADER + lo, this.held.subarray(lo, hi + 1));
    this.writeHeader();
  }

  private writeHeader() {
    const h = new Uint8Array(HEADER);
    const dv = writeHead(h, STORE_MAGIC, STORE_VERSION);
    dv.setUint32(12, this.pages, true);
    dv.setUint32(16, crc32(this.held), true);
    dv.setUint32(20, crc32(h.subarray(0, 20)), true);
    writeFull(this.index, 0, h);
  }

  /** True once closed (the store was dropped or started afresh). */
  get closed(): boolean {
    return this.#closed;
  }

  /** Closes the files (and the source of pages not yet read: those are no longer held). */
  close(): void {
    this.#closed = true;
    this.#source?.close();
    this.data.close();
    this.index.close();
  }
}

function indexFlaw(path: string, why: string): PageStoreError {
  return new PageStoreError(
    `${path}: ${why}; its pages cannot be trusted (stop the VM, or delete the file if it is gone)`,
  );
}

/**
 * Checks an index's header (its first HEADER bytes, of a file of `fileSize` bytes) against a VM of
 * `pages` pages; returns how many bytes of the file are the index, so no more is read.
 */
export function decodeIndexHeader(
  path: string,
  h: Uint8Array,
  pages: number,
  fileSize: number,
): number {
  if (h.length < HEADER || fileSize < HEADER) {
    throw indexFlaw(path, "index is too short for its header");
  }
  const dv = new DataView(h.buffer, h.byteOffset, HEADER);
  if (!hasMagic(h, 0, STORE_MAGIC)) {
    throw indexFlaw(path, "not a dcres page store index (wrong magic)");
  }
  const major = dv.getUint16(8, true);
  if (major > STORE_VERSION.major) {
    throw new PageStoreError(
      `${path}: page store format ${major}.${
        dv.getUint16(10, true)
      } is newer than this dcres (${STORE_VERSION.major}.${STORE_VERSION.minor}); upgrade dcres on this host`,
    );
  }
  if (crc32(h.subarray(0, 20)) !== dv.getUint32(20, true)) {
    throw indexFlaw(path, "index header checksum mismatch");
  }
  const had = dv.getUint32(12, true);
  if (had !== pages) {
    throw new PageStoreError(
      `this host's page store ${path} has ${had} pages, the request says ${pages}`,
    );
  }
  const { bitmap, size } = indexLayout(pages);
  if (fileSize < HEADER + bitmap) throw indexFlaw(path, "index is truncated in its bitmap");
  if (fileSize < size) throw indexFlaw(path, "index is truncated in its page checksums");
  return size;
}

/**
 * Decodes a whole index (`bytes`, from its first byte) of a VM of `pages` pages into the held bitmap
 * and the page checksums, views of `bytes`; throws PageStoreError naming the flaw.
 */
export function decodeIndex(
  path: string,
  bytes: Uint8Array,
  pages: number,
): { held: Uint8Array; crcs: Uint32Array } {
  decodeIndexHeader(path, bytes, pages, bytes.length);
  const { bitmap, crcs } = indexLayout(pages);
  const held = bytes.slice(HEADER, HEADER + bitmap);
  const dv = new DataView(bytes.buffer, bytes.byteOffset, HEADER);
  if (crc32(held) !== dv.getUint32(16, true)) {
    throw indexFlaw(path, "held bitmap checksum mismatch");
  }
  const table = new Uint32Array(pages);
  new Uint8Array(table.buffer).set(bytes.subarray(crcs, crcs + pages * 4));
  return { held, crcs: table };
}

/** Deletes the store files of `vm` under `dir`. */
function removeStore(dir: string, vm: string) {
  for (const ext of ["pages", "held"]) {
    try {
      Deno.removeSync(join(dir, `${vm}.${ext}`));
    } catch {
      // Already gone.
    }
  }
}

function popcount(b: number): number {
  let n = 0;
  for (; b; b &= b - 1) n++;
  return n;
}

/** Every VM's store on this host, with the host's capacity. */
export class PageStores {
  private readonly open = new Map<string, VmPageStore>();

  constructor(
    /** Directory of the store files. */ readonly dir: string,
    /** Most pages held across all VMs. */ readonly capacityPages: number,
    /** Host name, for messages. */ readonly host: string,
  ) {}

  /** Pages held across all VMs (of the stores opened since the agent started). */
  heldPages(): number {
    let n = 0;
    for (const s of this.open.values()) n += s.heldPages;
    return n;
  }

  /** The store of `vm`, opened on first use; `fresh` starts it empty (a VM starting). */
  store(vm: string, pages: number, fresh = false): VmPageStore {
    let s = this.open.get(vm);
    if (fresh && s) {
      s.close();
      s = undefined;
    }
    if (!s) {
      s = VmPageStore.open(this.dir, vm, pages, fresh);
      this.open.set(vm, s);
    }
    if (s.pages !== pages) {
      throw new PageStoreError(
        `${vm}: this host's page store has ${s.pages} pages, the request says ${pages}`,
      );
    }
    return s;
  }

  /** Throws unless `more` pages fit. */
  reserve(more: number): void {
    const held = this.heldPages();
    if (held + more > this.capacityPages) {
      throw new PageStoreError(
        `page store of ${this.host} is full: ${held * 4} KiB held, ${more * 4} KiB more asked, ` +
          `capacity ${this.capacityPages * 4} KiB (raise the agent's --page-store size)`,
      );
    }
  }

  /** Forgets and deletes the store of `vm`. */
  drop(vm: string): void {
    this.open.get(vm)?.close();
    this.open.delete(vm);
    removeStore(this.dir, vm);
  }

  /** Stores of all VMs with pages here. */
  list(): Array<{ vm: string; heldPages: number }> {
    return [...this.open.values()].map((s) => ({ vm: s.vm, heldPages: s.heldPages }));
  }
}
