/**
 * Copy-on-write saving. The consistency point is a short pause; the expensive part, write-protecting
 * all of guest RAM, happens before it while the guest runs: pages the guest writes in that window are
 * unprotected and remembered, and only those few are protected again inside the pause. After the
 * pause, a guest write to a page not yet saved faults; the page is copied aside first, then unprotected.
 */
import { gfnRuns } from "../memory/runs.ts";
import * as libc from "../ffi/libc.ts";
import { FEATURE, REGISTER_MODE, Userfaultfd } from "../ffi/uffd.ts";
import type { GuestMemory } from "../memory/guest_memory.ts";
import type { FragmentWriter, PageSource } from "./fragment_writer.ts";
import { PAGE_SIZE } from "../accel/accel.ts";
import { nextTurn } from "../rpc/deadline.ts";

const PROTECT_STEP = 64 << 20;

/** A copy-on-write save: armed at the consistency point, then saving while the guest runs. */
export interface CowSaver {
  /** Pages copied aside because the guest wrote them before they were saved. */
  readonly copiedAside: number;
  /** With the vCPUs paused: the pages set in `bits` (all pages when undefined) are to be saved. */
  arm(bits?: Uint8Array): void;
  /** Saves every wanted page in `todo` order, the guest running. */
  save(
    w: FragmentWriter,
    todo: number[],
    batch: number,
    onProgress?: (d: number, t: number) => void,
  ): Promise<void>;
  /** Ends copy-on-write. */
  close(): void;
}

/** One copy-on-write save of a VM's memory through userfaultfd write-protection (KVM). */
export class CowSession implements CowSaver {
  private readonly saved: Uint8Array;
  private readonly wanted: Uint8Array;
  private readonly touched = new Set<number>();
  private armed = false;
  private pump?: ReturnType<typeof setInterval>;
  private copies: Array<{ gfn: number; page: Uint8Array<ArrayBuffer> }> = [];
  /** Lifts protection before the VMM writes a page itself (it could not serve its own fault). */
  private guard?: Disposable;
  /** Pages copied aside because the guest wrote them before they were saved. */
  copiedAside = 0;

  private constructor(private readonly mem: GuestMemory, private readonly uffd: Userfaultfd) {
    this.saved = new Uint8Array(mem.pages);
    this.wanted = new Uint8Array(mem.pages);
  }

  /** Registers guest RAM and write-protects it in steps while the guest runs. */
  static async prepare(mem: GuestMemory): Promise<CowSession> {
    const uffd = Userfaultfd.open(FEATURE.WP_HUGETLBFS_SHMEM | FEATURE.WP_UNPOPULATED);
    const s = new CowSession(mem, uffd);
    s.guard = mem.guardWrites((g) => s.written(g));
    try {
      uffd.register(mem.hostAddr, mem.size, REGISTER_MODE.WP);
      for (let off = 0; off < mem.size; off += PROTECT_STEP) {
        uffd.writeProtect(
          mem.hostAddr + BigInt(off),
          Math.min(PROTECT_STEP, mem.size - off),
          true,
          false,
        );
        s.serve();
        await nextTurn();
      }
    } catch (e) {
      s.close();
      throw e;
    }
    // Until the pause, a vCPU blocked on a protected page must still be served, or it could not
    // be paused at all.
    s.pump = setInterval(() => s.serve(), 1);
    return s;
  }

  /**
   * With the vCPUs paused at the consistency point: the pages to save are those set in `bits` (all
   * pages when undefined). Pages the guest wrote while protection was being set up are protected
   * again; the rest already are.
   */
  arm(bits?: Uint8Array): void {
    clearInterval(this.pump);
    this.serve();
    if (!bits) this.wanted.fill(1);
    else {
      for (let i = 0; i < bits.length; i++) {
        const b = bits[i];
        if (b) {
          for (let k = 0; k < 8; k++) {
            if (b & (1 << k) && i * 8 + k < this.wanted.length) this.wanted[i * 8 + k] = 1;
          }
        }
      }
    }
    for (const g of this.touched) {
      if (this.wanted[g]) this.uffd.writeProtect(this.addr(g), PAGE_SIZE, true, false);
    }
    this.touched.clear();
    this.armed = true;
  }

  /** Handles pending write faults. */
  serve(): void {
    for (let evs = this.uffd.readEvents(); evs.length; evs = this.uffd.readEvents()) {
      for (const ev of evs) {
        this.written(Number((ev.address - this.mem.hostAddr) / BigInt(PAGE_SIZE)));
      }
    }
  }

  /** Page `g` is about to be written: its old contents are kept if still wanted, then it is freed. */
  private written(g: number): void {
    if (!this.armed) this.touched.add(g);
    else if (this.wanted[g] && !this.saved[g]) {
      this.copies.push({ gfn: g, page: this.mem.view(g * PAGE_SIZE, PAGE_SIZE).slice() });
      this.saved[g] = 1;
      this.copiedAside++;
    }
    this.uffd.writeProtect(this.addr(g), PAGE_SIZE, false);
  }

  /** Saves every wanted page (the guest running), in `todo` order, with copied-aside pages as they come. */
  async save(
    w: FragmentWriter,
    todo: number[],
    batch: number,
    onProgress?: (d: number, t: number) => void,
  ): Promise<void> {
    const src: PageSource = { bytes: this.mem.view(), base: this.mem.hostAddr };
    for (let i = 0; i < todo.length; i += batch) {
      this.serve();
      const pages = todo.slice(i, i + batch).filter((g) => !this.saved[g]);
      await w.append(pages, src);
      await w.flush();
      for (const g of pages) this.saved[g] = 1;
      for (const [start, count] of gfnRuns(pages)) {
        this.uffd.writeProtect(this.addr(start), count * PAGE_SIZE, false);
      }
      await this.writeCopies(w);
      onProgress?.(Math.min(i + batch, todo.length) * PAGE_SIZE, todo.length * PAGE_SIZE);
    }
    this.serve();
    await this.writeCopies(w);
  }

  private async writeCopies(w: FragmentWriter) {
    if (!this.copies.length) return;
    const buf = new Uint8Array(this.copies.length * PAGE_SIZE);
    this.copies.forEach((c, k) => buf.set(c.page, k * PAGE_SIZE));
    const offsets = this.copies.map((_, k) => k * PAGE_SIZE);
    await w.append(this.copies.map((c) => c.gfn), {
      bytes: buf,
      base: libc.ptrValue(Deno.UnsafePointer.of(buf)),
    }, offsets);
    await w.flush();
    this.copies = [];
  }

  private addr(g: number): bigint {
    return this.mem.hostAddr + BigInt(g * PAGE_SIZE);
  }

  /** Removes all protection and closes the userfaultfd. */
  close(): void {
    clearInterval(this.pump);
    this.guard?.[Symbol.dispose]();
    try {
      this.uffd.writeProtect(this.mem.hostAddr, this.mem.size, false);
      this.uffd.unregister(this.mem.hostAddr, this.mem.size);
    } catch {
      // The VM's memory is already gone.
    } finally {
      this.uffd.close();
    }
  }
}
