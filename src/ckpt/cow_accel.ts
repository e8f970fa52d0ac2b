/**
 * Copy-on-write saving done by the accelerator (the emulated CPU's write hook): no page is
 * write-protected and no fault is taken; at the consistency point the accelerator starts copying a
 * page aside before the guest's first store to it, and the saver claims pages batch by batch,
 * writing each claimed page from guest memory and each copied one from its copy.
 */
import type { AccelCow } from "../accel/accel.ts";
import * as libc from "../ffi/libc.ts";
import type { GuestMemory } from "../memory/guest_memory.ts";
import type { Vm } from "../vmm/vm.ts";
import type { CowSaver } from "./cow.ts";
import type { FragmentWriter, PageSource } from "./fragment_writer.ts";
import { PAGE_SIZE } from "../accel/accel.ts";

const KIND = { CLAIMED: 0, ASIDE: 1, NONE: 2 } as const;

/** One copy-on-write save through the accelerator. */
export class AccelCowSession implements CowSaver {
  #vm: Vm;
  #mem: GuestMemory;
  #cow?: AccelCow;

  constructor(vm: Vm) {
    this.#vm = vm;
    this.#mem = vm.memory;
  }

  /** Pages copied aside because the guest wrote them before they were saved. */
  get copiedAside(): number {
    return this.#cow?.copiedAside ?? 0;
  }

  /** With the vCPUs paused: the pages set in `bits` (all when undefined) are to be saved. */
  arm(bits?: Uint8Array): void {
    const wanted = bits ?? new Uint8Array(Math.ceil(this.#mem.pages / 64) * 8).fill(0xff);
    this.#cow = this.#vm.beginCow(wanted);
    if (!this.#cow) throw new Error("this accelerator has no copy-on-write of its own");
  }

  /** Saves every page of `todo` that is still wanted, the guest running. */
  async save(
    w: FragmentWriter,
    todo: number[],
    batch: number,
    onProgress?: (d: number, t: number) => void,
  ): Promise<void> {
    const cow = this.#cow!;
    const live: PageSource = { bytes: this.#mem.view(), base: this.#mem.hostAddr };
    const aside: PageSource = {
      bytes: libc.bytesAt(libc.ptrOf(cow.asideAddr), this.#mem.size),
      base: cow.asideAddr,
    };
    for (let i = 0; i < todo.length; i += batch) {
      const gfns = Uint32Array.from(todo.slice(i, i + batch));
      const kinds = new Uint8Array(gfns.length);
      cow.claim(gfns, kinds);
      const claimed = gfns.filter((_, k) => kinds[k] === KIND.CLAIMED);
      const copied = Array.from(gfns.filter((_, k) => kinds[k] === KIND.ASIDE));
      try {
        await w.append(Array.from(claimed), live);
        await w.flush();
      } finally {
        cow.release(claimed);
      }
      if (copied.length) {
        await w.append(copied, aside);
        await w.flush();
      }
      onProgress?.(Math.min(i + batch, todo.length) * PAGE_SIZE, todo.length * PAGE_SIZE);
    }
    // Pages the guest wrote after the saver had passed them were copied aside but never claimed:
    // every wanted page was in `todo`, so nothing is left.
  }

  /** Ends copy-on-write and frees the copies. */
  close(): void {
    this.#cow?.end();
    this.#cow = undefined;
  }
}
