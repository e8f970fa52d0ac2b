/**
 * Main's share of a split VM's guest memory, as remote paging changes it: pages come in through
 * userfaultfd (UFFDIO_COPY, UFFDIO_ZEROPAGE), leave by a hole punched in the memfd, and a
 * copy-on-write checkpoint write-protects them in place.
 */
import * as libc from "../ffi/libc.ts";
import type { Userfaultfd } from "../ffi/uffd.ts";
import type { GuestMemory } from "../memory/guest_memory.ts";
import { copyPages, zeroPages } from "../memory/page_install.ts";
import { indexRuns } from "../memory/runs.ts";
import { PAGE_SIZE } from "../accel/accel.ts";

/** 1 for each page present in main's memory. */
export function presentPages(mem: GuestMemory): Uint8Array {
  const present = new Uint8Array(mem.pages);
  for (const [off, len] of libc.dataRuns(mem.fd, mem.size)) {
    present.fill(1, off / PAGE_SIZE, (off + len) / PAGE_SIZE);
  }
  return present;
}

/** The VMM reads the pinned pages from its own thread, which must never fault: make them present. */
export function populate(mem: GuestMemory, pinned: number): void {
  libc.madvise(
    Deno.UnsafePointer.create(mem.hostAddr)!,
    pinned * PAGE_SIZE,
    libc.MADV.POPULATE_WRITE,
  );
}

/** Drops pages [first, first+count) from `mem`; a later access faults (or reads zeros unarmed). */
export function punchPages(mem: GuestMemory, first: number, count: number): void {
  libc.fallocate(
    mem.fd,
    libc.FALLOC.PUNCH_HOLE | libc.FALLOC.KEEP_SIZE,
    first * PAGE_SIZE,
    count * PAGE_SIZE,
  );
}

/** Main's guest memory under the pager's userfaultfd. */
export class MainMemory {
  /**
   * A copy-on-write checkpoint's hook: the guest is about to write `gfn`, which main protected;
   * it keeps the old contents first.
   */
  onWriteProtected?: (gfn: number) => void;
  readonly #mem: GuestMemory;
  readonly #uffd: Userfaultfd;

  readonly #guard: Disposable;

  constructor(mem: GuestMemory, uffd: Userfaultfd) {
    this.#mem = mem;
    this.#uffd = uffd;
    // A page the VMM writes itself must not be protected: this thread serves the fault it would take.
    this.#guard = mem.guardWrites((g) => {
      if (this.onWriteProtected) this.writeFault(g);
    });
  }

  /** Stops lifting protection for the VMM's own writes (the pager is done with this memory). */
  close(): void {
    this.#guard[Symbol.dispose]();
  }

  /** The guest memory. */
  get guest(): GuestMemory {
    return this.#mem;
  }

  /** Installs `gfns` (ascending within each run) from `data`, page k of it for gfns[k]. */
  copyIn(gfns: number[], data: Uint8Array): void {
    copyPages(this.#uffd, this.#mem.hostAddr, gfns, libc.ptrValue(Deno.UnsafePointer.of(data)));
  }

  /** Installs `gfns` as zero pages. */
  zeroIn(gfns: number[]): void {
    zeroPages(this.#uffd, this.#mem.hostAddr, gfns);
  }

  /** Drops `gfns` from main's memory (they must be paused or protected). */
  punch(gfns: number[]): void {
    const sorted = gfns.slice().sort((a, b) => a - b);
    // A page leaves unprotected, so nothing of a copy-on-write checkpoint outlives it.
    if (this.onWriteProtected) {
      this.protect(indexRuns(sorted).map(([i, k]) => [sorted[i], k] as [number, number]), false);
    }
    for (const [i, k] of indexRuns(sorted)) punchPages(this.#mem, sorted[i], k);
  }

  /** Sets or clears (waking writers) write protection of main's pages in `runs` [gfn, count]. */
  protect(runs: Array<[number, number]>, on: boolean): void {
    for (const [g, n] of runs) {
      this.#uffd.writeProtect(this.#mem.hostAddr + BigInt(g * PAGE_SIZE), n * PAGE_SIZE, on);
    }
  }

  /** The guest wrote protected page `g`: the checkpoint keeps its old contents, then it is freed. */
  writeFault(g: number): void {
    this.onWriteProtected?.(g);
    this.protect([[g, 1]], false);
  }
}
