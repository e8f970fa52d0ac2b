/**
 * Restores a checkpoint on this host: builds the machine from it, eager (every page loaded, then the
 * VM resumes) or lazy (the VM resumes at once and a LazyPager serves its faults from the fragments
 * while it prefetches the rest, most recently used first).
 */
import type { Accelerator } from "../accel/accel.ts";
import { GuestMemory } from "../memory/guest_memory.ts";
import { Machine, type MachineIo, type MachineState } from "../vmm/machine.ts";
import { LazyPager } from "./lazy_pager.ts";
import { OpenCheckpoint } from "./open_checkpoint.ts";
import { PAGE_SIZE } from "../accel/accel.ts";

/** How to restore. */
export interface RestoreOptions {
  /** A store directory (its latest generation) or one generation directory. */
  path: string;
  /** Name of the restored VM (default: the checkpoint's). */
  name?: string;
  /** Resume before the memory is loaded. */
  lazy: boolean;
  /** Console of the restored machine. */
  io: MachineIo;
  /** Called as bytes are loaded. */
  onProgress?: (done: number, total: number) => void;
  /**
   * Only the pages of these fragments (a split restore: the others go to sub-hosts); lazily, none
   * are loaded here: the split's pager serves them.
   */
  only?: ReadonlySet<number>;
  /** The accelerator to restore on (default: `openAccelerator()`), whichever one saved it. */
  accel?: Accelerator;
}

/** Low pages the VMM reads from its own thread (which must never fault on them): loaded before resume. */
const HOST_READ_PAGES = 256;

/** A restored machine, not yet started, and how to finish loading it. */
export interface Restored {
  /** The machine. */
  machine: Machine;
  /** The checkpoint it came from. */
  checkpoint: OpenCheckpoint;
  /** Lazy restore's pager (start it right after the vCPUs). */
  pager?: LazyPager;
  /** ms spent before the machine could start. */
  loadMs: number;
}

/** Opens a checkpoint and builds the machine from it (memory loaded unless lazy). */
export function restoreCheckpoint(opts: RestoreOptions): Restored {
  const t0 = performance.now();
  // If building fails, what was opened is closed and the failure itself reaches the caller.
  using opened = new DisposableStack();
  const ck = opened.adopt(OpenCheckpoint.open(opts.path, opts.only), (c) => c.close());
  const state: MachineState = structuredClone(ck.manifest.machine);
  if (opts.name) {
    state.spec.name = opts.name;
    state.vm.config.name = opts.name;
  }
  const memory = opened.adopt(
    GuestMemory.create(state.spec.memSize, `dcres-${state.spec.name}`),
    (m) => m.close(),
  );
  let pager: LazyPager | undefined;
  if (opts.lazy && opts.only) {
    // The split's pager installs main's pages from the checkpoint on demand.
  } else if (opts.lazy) {
    pager = new LazyPager(ck, memory, opts.onProgress);
    // The VMM itself reads the low pages (guest status, boot structures); fault-free, they must be in.
    pager.preload(Math.min(memory.pages, HOST_READ_PAGES));
  } else {
    const gfns = opts.only ? ck.pagesOf(opts.only) : undefined;
    const pages = gfns ? gfns.length : memory.pages;
    const step = 16384;
    for (let i = 0; i < pages; i += step) {
      const n = Math.min(step, pages - i);
      ck.load(memory, gfns ? gfns.slice(i, i + n) : Array.from({ length: n }, (_, k) => i + k));
      opts.onProgress?.((i + n) * PAGE_SIZE, pages * PAGE_SIZE);
    }
  }
  const machine = Machine.restore({ memory, io: opts.io, accel: opts.accel }, state);
  opened.move();
  return { machine, checkpoint: ck, pager, loadMs: performance.now() - t0 };
}
