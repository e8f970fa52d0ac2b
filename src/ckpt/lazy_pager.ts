/**
 * A lazily restored one-host VM's page faults, served from its checkpoint: the VM resumes at once,
 * userfaultfd (MISSING) reports each page it touches before the page is in, and a background pass
 * installs the rest, most recently used first.
 */
import { REGISTER_MODE, Userfaultfd } from "../ffi/uffd.ts";
import type { GuestMemory } from "../memory/guest_memory.ts";
import { LazyFill } from "./lazy_fill.ts";
import type { OpenCheckpoint } from "./open_checkpoint.ts";
import { PAGE_SIZE } from "../accel/accel.ts";

/**
 * Least time between two turns given to the event loop (control socket, vCPU messages) while
 * prefetching, ms: faults are served between batches without yielding.
 */
const YIELD_MS = 20;

/** Serves a lazily restored VM's page faults from the checkpoint and prefetches the rest. */
export class LazyPager {
  /** Faults served. */
  faults = 0;
  /**
   * Resolves when every page is resident (or the VM went away), with the time it took from `run`;
   * rejects when a page could not be loaded, so nothing reads the incomplete memory as whole.
   */
  readonly done: Promise<number>;
  readonly #mem: GuestMemory;
  readonly #uffd: Userfaultfd;
  readonly #fill: LazyFill;
  readonly #onProgress?: (done: number, total: number) => void;
  readonly #settle: PromiseWithResolvers<number>;
  #stopped = false;
  #closed = false;

  /** Arms userfaultfd on `mem`, none of whose pages is in yet; `onProgress` hears of bytes loaded. */
  constructor(
    ck: OpenCheckpoint,
    mem: GuestMemory,
    onProgress?: (done: number, total: number) => void,
  ) {
    this.#mem = mem;
    this.#onProgress = onProgress;
    this.#uffd = Userfaultfd.open(0n);
    this.#uffd.register(mem.hostAddr, mem.size, REGISTER_MODE.MISSING);
    this.#fill = new LazyFill(ck, this.#uffd, mem.hostAddr, new Uint8Array(mem.pages).fill(1));
    this.#settle = Promise.withResolvers<number>();
    this.done = this.#settle.promise;
    // `run`'s caller hears of a failure; a caller that only waits on `done` may come later.
    this.done.catch(() => {});
  }

  /**
   * Serves faults and prefetches until every page is resident, then unregisters. When a page
   * cannot be loaded it throws and stays registered: a page still missing must keep blocking the
   * vCPU that touches it, where unregistered it would read as a fresh zero page.
   */
  async run(): Promise<void> {
    const t0 = performance.now();
    const mem = this.#mem;
    try {
      await this.#fill.run({
        stopped: () => this.#stopped,
        between: () => this.#serveFaults(),
        yieldMs: YIELD_MS,
        onYield: () => this.#onProgress?.((mem.pages - this.#fill.left) * PAGE_SIZE, mem.size),
      });
    } catch (e) {
      this.#settle.reject(e);
      throw e;
    }
    this.#serveFaults();
    this.close();
    this.#settle.resolve(performance.now() - t0);
  }

  /** Installs pages 0..count-1 now (before the vCPUs run). */
  preload(count: number): void {
    this.#fill.install(Array.from({ length: count }, (_, g) => g));
  }

  /** Stops prefetching (the VM is going away). */
  stop(): void {
    this.#stopped = true;
  }

  /** Lets go of guest memory: the VM's teardown would otherwise wait on a fault nobody serves. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#uffd.teardown(this.#mem.hostAddr, this.#mem.size);
  }

  #serveFaults() {
    const base = this.#mem.hostAddr;
    for (let evs = this.#uffd.readEvents(); evs.length; evs = this.#uffd.readEvents()) {
      for (const ev of evs) {
        const g = Number((ev.address - base) / BigInt(PAGE_SIZE));
        this.faults++;
        if (this.#fill.isPending(g)) this.#fill.install([g]);
        else this.#uffd.wake(base + BigInt(g * PAGE_SIZE), PAGE_SIZE);
      }
    }
  }
}
