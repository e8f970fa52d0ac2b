/**
 * Restores a checkpoint on this host: eager (every page loaded, then the VM resumes) or lazy (the VM
 * resumes at once; userfaultfd MISSING faults are served from the fragments while a background pass
 * prefetches the rest, most recently used pages first).
 */
import { indexRuns } from "../memory/runs.ts";
import { join } from "node:path";
import * as libc from "../ffi/libc.ts";
import { installRun, REGISTER_MODE, Userfaultfd } from "../ffi/uffd.ts";
import type { Accelerator } from "../accel/accel.ts";
import { GuestMemory } from "../memory/guest_memory.ts";
import { Machine, type MachineIo, type MachineState } from "../vmm/machine.ts";
import { CheckpointFormatError, PAGE } from "./format.ts";
import { FragmentReader } from "./fragment_reader.ts";
import type { Manifest } from "./manifest.ts";
import { coversAll, expandPageMap } from "./page_map.ts";
import { resolveCheckpoint } from "./store.ts";
import { PAGE_FLAG } from "./fragment_layout.ts";

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
    const pages = manifest.machine.spec.memSize / PAGE;
    const mfile = join(dir, "MANIFEST");
    if (!coversAll(manifest.pageMap, pages)) {
      throw new CheckpointFormatError(
        mfile,
        0,
        "page map does not cover guest memory exactly once",
      );
    }
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
      for (const r of readers) r.close();
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
      e.off.push(offsets ? offsets[k] : g * PAGE);
    }
    for (const [f, e] of byFrag) this.readers[f].readInto(e.idx, dst, base, e.off);
  }

  /** True when page `g` is recorded as zero. */
  isZero(g: number): boolean {
    return (this.readers[this.fragmentOf[g]].pageFlags[this.indexOf[g]] & PAGE_FLAG.ZERO) !== 0;
  }

  /**
   * Installs pages `gfns` (ascending, at most `staging` holds) into memory at `base` through
   * `uffd`: stored pages with UFFDIO_COPY from `staging`, zero pages with UFFDIO_ZEROPAGE, one
   * call per run.
   */
  install(uffd: Userfaultfd, base: bigint, gfns: number[], staging: Uint8Array<ArrayBuffer>): void {
    const from = libc.ptrValue(Deno.UnsafePointer.of(staging));
    const stored = gfns.filter((g) => !this.isZero(g));
    this.loadTo(stored, staging, from, stored.map((_, k) => k * PAGE));
    for (const [k, n] of indexRuns(stored)) {
      installRun(
        base,
        PAGE,
        stored.slice(k, k + n),
        (dst, len, at) => uffd.copy(dst, from + BigInt((k + at) * PAGE), len),
      );
    }
    const zero = gfns.filter((g) => this.isZero(g));
    for (const [k, n] of indexRuns(zero)) {
      installRun(base, PAGE, zero.slice(k, k + n), (dst, len) => uffd.zeropage(dst, len));
    }
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
  const ck = OpenCheckpoint.open(opts.path, opts.only);
  const state: MachineState = structuredClone(ck.manifest.machine);
  if (opts.name) {
    state.spec.name = opts.name;
    state.vm.config.name = opts.name;
  }
  const memory = GuestMemory.create(state.spec.memSize, `dcres-${state.spec.name}`);
  try {
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
        opts.onProgress?.((i + n) * PAGE, pages * PAGE);
      }
    }
    const machine = Machine.restore({ memory, io: opts.io, accel: opts.accel }, state);
    return { machine, checkpoint: ck, pager, loadMs: performance.now() - t0 };
  } catch (e) {
    memory.close();
    ck.close();
    throw e;
  }
}

/** Low pages the VMM reads from its own thread (which must never fault on them): loaded before resume. */
const HOST_READ_PAGES = 256;
/** Pages installed per prefetch step (2 MiB): bounds how long a guest fault waits behind one. */
const BATCH_PAGES = 512;

/** Serves a lazily restored VM's page faults from the checkpoint and prefetches the rest. */
export class LazyPager {
  private readonly uffd: Userfaultfd;
  private readonly resident: Uint8Array;
  private residentCount = 0;
  private readonly staging = new Uint8Array(BATCH_PAGES * PAGE);
  /** Faults served. */
  faults = 0;
  /** Resolves when every page is resident, with the time it took from `run`. */
  readonly done: Promise<number>;
  private resolveDone!: (ms: number) => void;
  private stopped = false;

  constructor(
    private readonly ck: OpenCheckpoint,
    private readonly mem: GuestMemory,
    private readonly onProgress?: (d: number, t: number) => void,
  ) {
    this.resident = new Uint8Array(mem.pages);
    this.uffd = Userfaultfd.open(0n);
    this.uffd.register(mem.hostAddr, mem.size, REGISTER_MODE.MISSING);
    this.done = new Promise((r) => (this.resolveDone = r));
  }

  /** Serves faults and prefetches until every page is resident, then unregisters. */
  async run(): Promise<void> {
    const t0 = performance.now();
    const order = this.ck.manifest.prefetchOrder;
    let next = 0;
    let lastYield = performance.now();
    try {
      while (!this.stopped && this.residentCount < this.mem.pages) {
        this.serveFaults();
        const batch: number[] = [];
        while (next < order.length && batch.length < BATCH_PAGES) {
          const g = order[next++];
          if (!this.resident[g]) batch.push(g);
        }
        if (batch.length) this.install(batch);
        else if (this.residentCount < this.mem.pages) {
          for (let g = 0; g < this.mem.pages; g++) if (!this.resident[g]) batch.push(g);
          for (let i = 0; i < batch.length; i += BATCH_PAGES) {
            this.install(batch.slice(i, i + BATCH_PAGES));
          }
        }
        if (performance.now() - lastYield > 20) {
          // Faults are served between batches without yielding; the event loop (control socket,
          // vCPU messages) gets a turn every 20 ms.
          this.onProgress?.(this.residentCount * PAGE, this.mem.size);
          await new Promise((r) => setTimeout(r, 0));
          lastYield = performance.now();
        }
      }
    } finally {
      this.serveFaults();
      try {
        this.uffd.unregister(this.mem.hostAddr, this.mem.size);
      } catch {
        // Memory already unmapped (VM stopped).
      }
      this.uffd.close();
      this.resolveDone(performance.now() - t0);
    }
  }

  /** Installs pages 0..count-1 now (before the vCPUs run). */
  preload(count: number): void {
    for (let g = 0; g < count; g += BATCH_PAGES) {
      this.install(Array.from({ length: Math.min(BATCH_PAGES, count - g) }, (_, i) => g + i));
    }
  }

  /** Stops prefetching (the VM is going away). */
  stop(): void {
    this.stopped = true;
  }

  /** Pages resident so far. */
  get residentPages(): number {
    return this.residentCount;
  }

  private serveFaults() {
    for (let evs = this.uffd.readEvents(); evs.length; evs = this.uffd.readEvents()) {
      for (const ev of evs) {
        const g = Number((ev.address - this.mem.hostAddr) / BigInt(PAGE));
        this.faults++;
        if (!this.resident[g]) this.install([g]);
        else this.uffd.wake(this.mem.hostAddr + BigInt(g * PAGE), PAGE);
      }
    }
  }

  /** Installs `gfns` (not yet resident) with one UFFDIO_COPY / ZEROPAGE per contiguous run. */
  private install(gfns: number[]) {
    const todo = gfns.filter((g) => !this.resident[g]).sort((a, b) => a - b);
    this.ck.install(this.uffd, this.mem.hostAddr, todo, this.staging);
    for (const g of todo) this.mark(g);
  }

  private mark(g: number) {
    if (!this.resident[g]) {
      this.resident[g] = 1;
      this.residentCount++;
    }
  }
}
