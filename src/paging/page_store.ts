/**
 * A sub-host's page store: the pages of split VMs this host holds, in two files per VM in the
 * agent's data directory, so they outlive an agent restart. `VM.pages` is a sparse file of the VM's
 * memory; `VM.held` is the index (`page_index.ts`). The store serves only pages it holds and whose
 * checksum matches: asked for another, it answers with an error, never with zeros or garbage. A
 * per-host capacity bounds the pages held across all VMs.
 */
import { join } from "node:path";
import { crc32 } from "../ckpt/format.ts";
import {
  decodeIndex,
  decodeIndexHeader,
  encodeIndexHeader,
  INDEX_HEADER,
  indexFlaw,
  indexLayout,
  PageStoreError,
} from "./page_index.ts";
import { indexRuns } from "../memory/runs.ts";
import { PAGE_SIZE } from "../accel/accel.ts";
import { lazyRecordPages, type PageSource, PendingPages } from "./lazy_pages.ts";
import { removeQuietly } from "../ffi/atomic_file.ts";

export { type PageSource, PageStoreError };

const ZERO_PAGE_CRC = crc32(new Uint8Array(PAGE_SIZE));
/** Pages read from a source at a time when the stores finish their loads. */
const FINISH_BATCH = 1024;

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
  /** Held pages whose bytes are still in a lazy load's source (the index claims none of them). */
  #lazy?: PendingPages;
  #closed = false;

  private constructor(
    /** Directory of the store's files. */ readonly dir: string,
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
    const record = join(dir, `${vm}.lazy`);
    // Before the index is emptied: a kill in between never leaves an old load's record over it.
    if (fresh) removeLazyRecord(record);
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
        const head = new Uint8Array(INDEX_HEADER);
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
    const store = new VmPageStore(dir, vm, pages, data, index, held, crcs);
    if (created) store.writeHeader();
    try {
      // An index made anew has no load under way: a record beside it is an orphan.
      if (created) removeLazyRecord(record);
      else store.#lazy = PendingPages.recover(record, pages, (g) => store.#inStore(g));
    } catch (e) {
      store.close();
      throw e;
    }
    return store;
  }

  /** Pages held (those still in the source too). */
  get heldPages(): number {
    return this.heldCount + this.pendingPages;
  }

  /** Held pages still to be read from the source. */
  get pendingPages(): number {
    return this.#lazy?.count ?? 0;
  }

  /** True when `gfn` is held here (in the store, or still in its source). */
  holds(gfn: number): boolean {
    return this.#inStore(gfn) || !!this.#lazy?.has(gfn);
  }

  #inStore(gfn: number): boolean {
    return (this.held[gfn >> 3] & (1 << (gfn & 7))) !== 0;
  }

  /** The held bitmap (bit g set: page g is here, or still in the source). */
  bitmap(): Uint8Array {
    const out = this.held.slice();
    this.#lazy?.orInto(out);
    return out;
  }

  /**
   * Starts holding `gfns` of an empty store with their bytes still in `source` (a lazy load), which
   * the store owns from now on; `describe` is recorded with them, for an agent that picks the load
   * up again after a restart ({@link unfinishedLoad}). The index claims a page once {@link fill}
   * brings it in.
   */
  backWith(gfns: ArrayLike<number>, source: PageSource, describe: Uint8Array): void {
    if (this.heldCount || this.#lazy) {
      throw new PageStoreError(`${this.vm}: a lazy load needs an empty page store`);
    }
    this.#lazy = PendingPages.create(this.#recordPath, this.pages, gfns, source, describe);
    this.#endLoadIfDone();
  }

  get #recordPath(): string {
    return join(this.dir, `${this.vm}.lazy`);
  }

  /**
   * The description of a lazy load an agent stopped in the middle of, whose pages nobody reads yet
   * ({@link replaceSource} gives them a source again); undefined when there is none.
   */
  get unfinishedLoad(): Uint8Array | undefined {
    return this.#lazy && !this.#lazy.attached ? this.#lazy.describe : undefined;
  }

  /**
   * Reads the pages still in the source from `source` from now on (a damaged copy replaced, or an
   * unfinished load picked up); the old source is closed. Without pages left, `source` is closed.
   */
  replaceSource(source: PageSource): void {
    if (this.#lazy) this.#lazy.attach(source);
    else source.close();
  }

  /** Up to `max` pages still in the source, from where the last call left off. */
  nextPending(max: number): number[] {
    return this.#lazy?.next(max) ?? [];
  }

  /**
   * Reads those of `gfns` still in the source into the store; throws PageSourceError when the
   * source cannot give them (they stay pending, so a replaced source can be tried again).
   */
  fill(gfns: ArrayLike<number>): void {
    const todo = this.#lazy?.among(gfns);
    if (!todo?.length) return;
    const buf = new Uint8Array(todo.length * PAGE_SIZE);
    try {
      this.#lazy!.read(todo, buf);
    } catch (e) {
      throw new PageSourceError(this.vm, e as Error);
    }
    this.put(todo, buf);
  }

  #unpend(gfns: ArrayLike<number>) {
    if (!this.#lazy) return;
    this.#lazy.clear(gfns);
    this.#endLoadIfDone();
  }

  #endLoadIfDone() {
    if (!this.#lazy || this.#lazy.count) return;
    this.#lazy.finish();
    this.#lazy = undefined;
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
    writeFull(this.index, INDEX_HEADER + lo, this.held.subarray(lo, hi + 1));
    this.writeHeader();
  }

  private writeHeader() {
    writeFull(this.index, 0, encodeIndexHeader(this.pages, this.held));
  }

  /** True once closed (the store was dropped or started afresh). */
  get closed(): boolean {
    return this.#closed;
  }

  /** Closes the files (and the source of pages not yet read: those are no longer held). */
  close(): void {
    // Once: a descriptor number reused since must never be closed under its new owner.
    if (this.#closed) return;
    this.#closed = true;
    this.#lazy?.close();
    this.data.close();
    this.index.close();
  }
}

/** Deletes a lazy load record at `path` and what a kill in its writing may have left. */
function removeLazyRecord(path: string) {
  removeQuietly(path);
  removeQuietly(`${path}.tmp`);
}

/**
 * Deletes the store files of `vm` under `dir`, the lazy load record first: a kill in the middle
 * never leaves a record whose load would come back without its store.
 */
function removeStore(dir: string, vm: string) {
  removeLazyRecord(join(dir, `${vm}.lazy`));
  for (const ext of ["held", "pages"]) removeQuietly(join(dir, `${vm}.${ext}`));
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

  /**
   * Reads pages still in a checkpoint into their stores for up to `withinMs` (the agent stopping:
   * what is left stays in the lazy load records, picked up again at the next start); returns how
   * many are left.
   */
  finishLoads(withinMs: number): number {
    const end = performance.now() + withinMs;
    for (const s of this.open.values()) {
      for (let b = s.nextPending(FINISH_BATCH); b.length; b = s.nextPending(FINISH_BATCH)) {
        if (performance.now() > end) break;
        try {
          s.fill(b);
        } catch {
          break;
        }
      }
    }
    let left = 0;
    for (const s of this.open.values()) left += s.pendingPages;
    return left;
  }

  /**
   * The VMs whose store has a lazy load a stopped agent left unfinished, with their page counts (or
   * why the record cannot be read).
   */
  unfinishedLoads(): Array<{ vm: string; pages: number } | { vm: string; error: string }> {
    const out: Array<{ vm: string; pages: number } | { vm: string; error: string }> = [];
    let names: Deno.DirEntry[];
    try {
      names = [...Deno.readDirSync(this.dir)];
    } catch {
      return out;
    }
    for (const e of names) {
      if (!e.isFile || !e.name.endsWith(".lazy")) continue;
      const vm = e.name.slice(0, -".lazy".length);
      try {
        const pages = lazyRecordPages(join(this.dir, e.name));
        if (pages !== undefined) out.push({ vm, pages });
      } catch (err) {
        out.push({ vm, error: (err as Error).message });
      }
    }
    return out;
  }

  /** Forgets and deletes the store of `vm`. */
  drop(vm: string): void {
    this.open.get(vm)?.close();
    this.open.delete(vm);
    removeStore(this.dir, vm);
  }

  /** Stores of all VMs with pages here, and how many of those pages are still in a checkpoint. */
  list(): Array<{ vm: string; heldPages: number; pendingPages: number }> {
    return [...this.open.values()].map((s) => ({
      vm: s.vm,
      heldPages: s.heldPages,
      pendingPages: s.pendingPages,
    }));
  }
}
