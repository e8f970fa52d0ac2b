/** Guest RAM: one memfd mapped shared, so other processes and checkpoints can map the same pages. */
import * as libc from "../ffi/libc.ts";
import type { Persist } from "../codec/persist.ts";
import { PAGE_SIZE } from "../accel/accel.ts";

/** Guest memory cannot be had; says how much was asked and what is free. */
export class GuestMemoryError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "GuestMemoryError";
  }
}

/** What restoring guest memory needs besides its contents. */
export interface GuestMemoryState {
  /** Bytes of guest RAM. */
  size: number;
}

/** Bytes the kernel says can be allocated without swapping (MemAvailable). */
export function hostAvailableMemory(): number {
  return Deno.systemMemoryInfo().available;
}

/**
 * Guest RAM backed by a memfd, mapped shared into this process. Pages the VMM itself writes while
 * the guest runs are recorded with `markWritten`: an accelerator's dirty log sees only the guest's
 * writes, so `Vm.dirtyBitmap` ORs these in.
 */
export class GuestMemory implements Persist<GuestMemoryState> {
  /** One bit per page the VMM wrote since the last `takeWritten`, laid out as a dirty bitmap. */
  readonly #written: Uint8Array;
  #anyWritten = false;
  /** Whoever write-protects pages of this memory, told before the VMM writes one (`prepareWrite`). */
  readonly #guards = new Set<(gfn: number) => void>();

  private constructor(
    /** The memfd. */
    readonly fd: number,
    /** Size in bytes. */
    readonly size: number,
    /** Host address of guest physical address 0. */
    readonly ptr: Deno.PointerObject,
  ) {
    this.#written = new Uint8Array(Math.ceil(size / PAGE_SIZE / 64) * 8);
  }

  /** Allocates `size` bytes (a multiple of 4 KiB) of zeroed guest RAM. */
  static create(size: number, name = "dcres-guest"): GuestMemory {
    if (!Number.isSafeInteger(size) || size <= 0 || size % PAGE_SIZE !== 0) {
      throw new GuestMemoryError(`guest memory size ${size} must be a positive multiple of 4 KiB`);
    }
    const avail = hostAvailableMemory();
    if (size > avail) {
      throw new GuestMemoryError(
        `guest memory of ${fmtMiB(size)} exceeds the host's available ${
          fmtMiB(avail)
        }; use a smaller --mem`,
      );
    }
    const fd = libc.memfdCreate(name);
    libc.ftruncate(fd, size);
    const ptr = libc.mmap(
      size,
      libc.MAP.PROT_READ | libc.MAP.PROT_WRITE,
      libc.MAP.SHARED | libc.MAP.NORESERVE,
      fd,
    );
    return new GuestMemory(fd, size, ptr);
  }

  /** Builds guest memory from saved state; contents come from the caller (a checkpoint). */
  static restore(args: { name?: string }, state: GuestMemoryState): GuestMemory {
    return GuestMemory.create(state.size, args.name);
  }

  /** Host address of guest physical address 0, as a number for ioctls. */
  get hostAddr(): bigint {
    return libc.ptrValue(this.ptr);
  }

  /** Number of 4 KiB pages. */
  get pages(): number {
    return this.size / PAGE_SIZE;
  }

  /** A live view of [gpa, gpa+length) (no copy). */
  view(gpa = 0, length = this.size - gpa): Uint8Array<ArrayBuffer> {
    if (gpa < 0 || gpa + length > this.size) {
      throw new RangeError(`guest range 0x${gpa.toString(16)}+${length} is outside guest memory`);
    }
    return libc.bytesAt(libc.ptrAdd(this.ptr, gpa), length);
  }

  /** A live 64-bit view of [gpa, gpa+8*count). */
  u64(gpa: number, count: number): BigUint64Array<ArrayBuffer> {
    const v = this.view(gpa, count * 8);
    return new BigUint64Array(v.buffer, v.byteOffset, count);
  }

  /** Records that the VMM wrote [addr, addr+len) itself (a write no dirty log sees). */
  markWritten(addr: number, len: number): void {
    if (len <= 0) return;
    if (addr < 0 || addr + len > this.size) {
      throw new RangeError(`guest range 0x${addr.toString(16)}+${len} is outside guest memory`);
    }
    const last = Math.floor((addr + len - 1) / PAGE_SIZE);
    for (let p = Math.floor(addr / PAGE_SIZE); p <= last; p++) {
      this.#written[p >> 3] |= 1 << (p & 7);
    }
    this.#anyWritten = true;
  }

  /**
   * Has `guard` told of each page the VMM is about to write itself, until the returned handle is
   * disposed: a copy-on-write checkpoint keeps the page's old contents and lifts its protection.
   */
  guardWrites(guard: (gfn: number) => void): Disposable {
    this.#guards.add(guard);
    return { [Symbol.dispose]: () => this.#guards.delete(guard) };
  }

  /**
   * The VMM is about to write [addr, addr+len) itself while the guest may run: every guard lets go
   * of those pages first, since a write from this thread to a page it write-protected would wait
   * forever on a fault only this thread serves; the pages are recorded as `markWritten` does.
   */
  prepareWrite(addr: number, len: number): void {
    if (len <= 0) return;
    this.markWritten(addr, len);
    if (!this.#guards.size) return;
    const last = Math.floor((addr + len - 1) / PAGE_SIZE);
    for (let p = Math.floor(addr / PAGE_SIZE); p <= last; p++) {
      for (const guard of this.#guards) guard(p);
    }
  }

  /**
   * ORs the pages recorded by `markWritten` into `into` (a dirty bitmap: one bit per page,
   * `Math.ceil(pages / 64) * 8` bytes) and forgets them.
   */
  takeWritten(into: Uint8Array): void {
    if (!this.#anyWritten) return;
    const n = Math.min(into.length, this.#written.length);
    for (let i = 0; i < n; i++) into[i] |= this.#written[i];
    this.#written.fill(0);
    this.#anyWritten = false;
  }

  /** The state needed to recreate this memory (its contents are saved by the checkpoint layer). */
  save(): GuestMemoryState {
    return { size: this.size };
  }

  /** Unmaps and closes. */
  close(): void {
    libc.munmap(this.ptr, this.size);
    libc.close(this.fd);
  }

  /** Unmaps and closes, at the end of a `using` block. */
  [Symbol.dispose](): void {
    this.close();
  }
}

/** `n` bytes as MiB with no decimals, for messages. */
export function fmtMiB(n: number): string {
  return `${Math.round(n / (1 << 20))} MiB`;
}
