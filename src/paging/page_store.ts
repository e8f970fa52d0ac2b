/**
 * A sub-host's page store: the pages of split VMs this host holds, one sparse file per VM in the
 * agent's data directory (so they outlive an agent restart) with a bitmap of the pages held. The
 * store serves only pages it holds: asked for another, it answers with an error, never with zeros.
 * A per-host capacity bounds the pages held across all VMs.
 */
import { join } from "node:path";
import { PAGE_SIZE } from "../memory/guest_memory.ts";
import { indexRuns } from "../memory/runs.ts";

/** The store refused: full, unknown VM, or a page it does not hold. */
export class PageStoreError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "PageStoreError";
  }
}

function readFull(f: Deno.FsFile, at: number, into: Uint8Array) {
  f.seekSync(at, Deno.SeekMode.Start);
  for (let o = 0; o < into.length;) {
    const n = f.readSync(into.subarray(o));
    if (n === null) {
      into.fill(0, o);
      return;
    }
    o += n;
  }
}

function writeFull(f: Deno.FsFile, at: number, from: Uint8Array) {
  f.seekSync(at, Deno.SeekMode.Start);
  for (let o = 0; o < from.length;) o += f.writeSync(from.subarray(o));
}

/** The pages of one VM held here. */
export class VmPageStore {
  private heldCount = 0;

  private constructor(
    /** VM name. */ readonly vm: string,
    /** Pages of the VM's memory. */ readonly pages: number,
    private readonly data: Deno.FsFile,
    private readonly bitsFile: Deno.FsFile,
    private readonly held: Uint8Array,
  ) {
    for (const b of held) this.heldCount += popcount(b);
  }

  /** Opens (or creates) the store of `vm` under `dir`; `fresh` empties it first. */
  static open(dir: string, vm: string, pages: number, fresh = false): VmPageStore {
    Deno.mkdirSync(dir, { recursive: true, mode: 0o700 });
    const data = Deno.openSync(join(dir, `${vm}.pages`), { read: true, write: true, create: true });
    const had = data.statSync().size;
    if (!fresh && had !== 0 && had !== pages * PAGE_SIZE) {
      data.close();
      throw new PageStoreError(
        `${vm}: this host's page store has ${had / PAGE_SIZE} pages, the request says ${pages}`,
      );
    }
    if (fresh) data.truncateSync(0);
    data.truncateSync(pages * PAGE_SIZE);
    const bitsFile = Deno.openSync(join(dir, `${vm}.held`), {
      read: true,
      write: true,
      create: true,
    });
    if (fresh) bitsFile.truncateSync(0);
    const held = new Uint8Array(Math.ceil(pages / 8));
    readFull(bitsFile, 0, held);
    return new VmPageStore(vm, pages, data, bitsFile, held);
  }

  /** Pages held. */
  get heldPages(): number {
    return this.heldCount;
  }

  /** True when `gfn` is held here. */
  holds(gfn: number): boolean {
    return (this.held[gfn >> 3] & (1 << (gfn & 7))) !== 0;
  }

  /** The held bitmap (bit g set: page g is here). */
  bitmap(): Uint8Array {
    return this.held.slice();
  }

  /** Starts holding `gfns` of a fresh store (holes in its file: zero pages), a new VM's share. */
  holdZero(gfns: ArrayLike<number>): void {
    this.mark(gfns, true);
  }

  /** Stores `gfns` with their contents (a page-out). */
  put(gfns: ArrayLike<number>, pages: Uint8Array): void {
    for (const [i, n] of indexRuns(gfns)) {
      writeFull(this.data, gfns[i] * PAGE_SIZE, pages.subarray(i * PAGE_SIZE, (i + n) * PAGE_SIZE));
    }
    this.mark(gfns, true);
  }

  /** Reads `gfns`, every one of which must be held (a page-in). */
  get(gfns: ArrayLike<number>): Uint8Array {
    for (let i = 0; i < gfns.length; i++) {
      if (!this.holds(gfns[i])) {
        throw new PageStoreError(`${this.vm}: gfn ${gfns[i]} is not held on this host`);
      }
    }
    const out = new Uint8Array(gfns.length * PAGE_SIZE);
    for (const [i, n] of indexRuns(gfns)) {
      readFull(this.data, gfns[i] * PAGE_SIZE, out.subarray(i * PAGE_SIZE, (i + n) * PAGE_SIZE));
    }
    return out;
  }

  /** Stops holding `gfns` (main has them now). */
  release(gfns: ArrayLike<number>): void {
    this.mark(gfns, false);
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
    // The bitmap is written through so a restarted agent knows what it holds.
    if (hi >= 0) writeFull(this.bitsFile, lo, this.held.subarray(lo, hi + 1));
  }

  /** Closes the files. */
  close(): void {
    this.data.close();
    this.bitsFile.close();
  }
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
