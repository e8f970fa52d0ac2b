/**
 * The pages of a lazily restored VM that are still only in its checkpoint, installed into guest
 * memory through a userfaultfd: one on demand when the guest faults on it, the others by a
 * background pass in the checkpoint's prefetch order (most recently used first), then by address.
 */
import * as libc from "../ffi/libc.ts";
import type { Userfaultfd } from "../ffi/uffd.ts";
import { copyPages, zeroPages } from "../memory/page_install.ts";
import type { OpenCheckpoint } from "./open_checkpoint.ts";
import { PAGE_SIZE } from "../accel/accel.ts";
import { nextTurn } from "../rpc/deadline.ts";

/** Pages installed per step (2 MiB): bounds how long a guest fault waits behind one. */
const BATCH_PAGES = 512;

/** How a background pass shares the thread. */
export interface FillPass {
  /** True once the pass should end early (the VM is going away). */
  stopped(): boolean;
  /** Runs before each batch (a pager that reads its own faults serves them here). */
  between?(): void;
  /** Least time between two turns given to the event loop, ms (default 0: after every batch). */
  yieldMs?: number;
  /** Runs before each turn given to the event loop. */
  onYield?(): void;
}

/** A lazy restore's pages still to install. */
export class LazyFill {
  readonly #ck: OpenCheckpoint;
  readonly #uffd: Userfaultfd;
  readonly #base: bigint;
  /** 1: the page's bytes are still only in the checkpoint. */
  readonly #pending: Uint8Array;
  #left = 0;
  readonly #staging = new Uint8Array(BATCH_PAGES * PAGE_SIZE);
  /** Next position in the prefetch order, then in the scan by address. */
  #next = 0;
  #scan = 0;

  /**
   * Installs from `ck` the pages `pending` marks (1) into guest memory mapped at `base`, registered
   * MISSING with `uffd`.
   */
  constructor(ck: OpenCheckpoint, uffd: Userfaultfd, base: bigint, pending: Uint8Array) {
    this.#ck = ck;
    this.#uffd = uffd;
    this.#base = base;
    this.#pending = pending;
    for (const p of pending) this.#left += p;
  }

  /** Pages not installed yet. */
  get left(): number {
    return this.#left;
  }

  /** True while page `g` is still only in the checkpoint. */
  isPending(g: number): boolean {
    return this.#pending[g] === 1;
  }

  /** Installs those of `gfns` still pending, one UFFDIO_COPY / ZEROPAGE per contiguous run. */
  install(gfns: number[]): void {
    const todo = gfns.filter((g) => this.#pending[g]).sort((a, b) => a - b);
    for (let i = 0; i < todo.length; i += BATCH_PAGES) {
      this.#installBatch(todo.slice(i, i + BATCH_PAGES));
    }
    for (const g of todo) {
      if (this.#pending[g]) {
        this.#pending[g] = 0;
        this.#left--;
      }
    }
  }

  /** Installs every page still pending, a batch at a time, until none is left or `stopped()`. */
  async run(pass: FillPass): Promise<void> {
    let lastYield = performance.now();
    while (!pass.stopped() && this.#left > 0) {
      pass.between?.();
      this.install(this.#nextBatch());
      if (performance.now() - lastYield >= (pass.yieldMs ?? 0)) {
        pass.onYield?.();
        await nextTurn();
        lastYield = performance.now();
      }
    }
  }

  /**
   * Installs `gfns` (ascending, at most a batch): stored pages with UFFDIO_COPY through the staging
   * buffer, zero pages with UFFDIO_ZEROPAGE, one call per run.
   */
  #installBatch(gfns: number[]) {
    const ck = this.#ck;
    const from = libc.ptrValue(Deno.UnsafePointer.of(this.#staging));
    const stored = gfns.filter((g) => !ck.isZero(g));
    ck.loadTo(stored, this.#staging, from, stored.map((_, k) => k * PAGE_SIZE));
    copyPages(this.#uffd, this.#base, stored, from);
    zeroPages(this.#uffd, this.#base, gfns.filter((g) => ck.isZero(g)));
  }

  /** Up to a batch of pending pages: next in the prefetch order, and once that is done by address. */
  #nextBatch(): number[] {
    const order = this.#ck.manifest.prefetchOrder;
    const batch: number[] = [];
    while (this.#next < order.length && batch.length < BATCH_PAGES) {
      const g = order[this.#next++];
      if (this.#pending[g]) batch.push(g);
    }
    if (batch.length) return batch;
    for (; this.#scan < this.#pending.length && batch.length < BATCH_PAGES; this.#scan++) {
      if (this.#pending[this.#scan]) batch.push(this.#scan);
    }
    return batch;
  }
}
