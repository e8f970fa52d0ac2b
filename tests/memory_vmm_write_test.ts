/**
 * The VMM writes guest memory itself (memstamp's verify command) from the thread that serves its
 * userfaultfd: a copy-on-write checkpoint's write protection must be lifted before such a write, or
 * the thread waits forever on a fault only it can serve (a split VM's VMM hung so when the
 * coordinator's scheduled checkpoint met a `guest verify`). Checked through /proc/self/pagemap, so a
 * regression fails here instead of hanging the test.
 */
import { assert, assertEquals } from "./helpers/assert.ts";
import { GuestMemory } from "../src/memory/guest_memory.ts";
import { CowSession } from "../src/ckpt/cow.ts";
import { MainMemory } from "../src/paging/main_memory.ts";
import { FEATURE, REGISTER_MODE, Userfaultfd } from "../src/ffi/uffd.ts";
import type { FragmentWriter, PageSource } from "../src/ckpt/fragment_writer.ts";
import { PAGE_SIZE } from "../src/accel/accel.ts";

/** Bit 57 of a pagemap entry: the page is write-protected through userfaultfd. */
const PM_UFFD_WP = 1n << 57n;
const GFN = 4;

/** Whether page `g` of `mem` is write-protected now. */
function writeProtected(mem: GuestMemory, g: number): boolean {
  using f = Deno.openSync("/proc/self/pagemap");
  const at = Number(mem.hostAddr / BigInt(PAGE_SIZE)) + g;
  f.seekSync(at * 8, Deno.SeekMode.Start);
  const b = new Uint8Array(8);
  assertEquals(f.readSync(b), 8);
  return (new DataView(b.buffer).getBigUint64(0, true) & PM_UFFD_WP) !== 0n;
}

/** A FragmentWriter stand-in that keeps the first bytes appended for page `g`. */
function capture(g: number): { w: FragmentWriter; saved: () => Uint8Array | undefined } {
  let got: Uint8Array | undefined;
  const w = {
    append(gfns: ArrayLike<number>, src: PageSource, offsets?: ArrayLike<number>) {
      for (let k = 0; k < gfns.length; k++) {
        if (gfns[k] !== g || got) continue;
        const off = offsets ? offsets[k] : gfns[k] * PAGE_SIZE;
        got = src.bytes.slice(off, off + PAGE_SIZE);
      }
      return Promise.resolve();
    },
    flush: () => Promise.resolve(),
  };
  return { w: w as unknown as FragmentWriter, saved: () => got };
}

Deno.test("a page the VMM writes itself during a one-host copy-on-write checkpoint is unprotected first and saved with its contents of the consistency point", async () => {
  using mem = GuestMemory.create(64 * PAGE_SIZE, "dcres-vmm-write-test");
  mem.view(GFN * PAGE_SIZE, PAGE_SIZE).fill(0xaa);
  const cow = await CowSession.prepare(mem);
  try {
    cow.arm();
    assert(writeProtected(mem, GFN), "the checkpoint protected the page");
    mem.prepareWrite(GFN * PAGE_SIZE + 8, 16);
    assert(!writeProtected(mem, GFN), "the page is still protected: the write would hang");
    mem.view(GFN * PAGE_SIZE, PAGE_SIZE).fill(0x55);
    const { w, saved } = capture(GFN);
    await cow.save(w, Array.from({ length: mem.pages }, (_, g) => g), 16);
    assertEquals(cow.copiedAside, 1);
    assertEquals(saved()?.every((b) => b === 0xaa), true, "the checkpoint saved the new bytes");
  } finally {
    cow.close();
  }
  const into = new Uint8Array(8);
  mem.takeWritten(into);
  assertEquals(into[0], 1 << GFN, "the VMM's write is in the dirty log for the next checkpoint");
});

Deno.test("a page the VMM writes itself while a split VM's main memory is write-protected is handed to the checkpoint first, then unprotected", () => {
  using mem = GuestMemory.create(64 * PAGE_SIZE, "dcres-vmm-write-test");
  mem.view().fill(1);
  const uffd = Userfaultfd.open(FEATURE.WP_HUGETLBFS_SHMEM);
  try {
    uffd.register(mem.hostAddr, mem.size, REGISTER_MODE.MISSING | REGISTER_MODE.WP);
    const main = new MainMemory(mem, uffd);
    const told: number[] = [];
    main.onWriteProtected = (g) => told.push(g);
    main.protect([[0, mem.pages]], true);
    assert(writeProtected(mem, GFN), "the checkpoint protected the page");
    mem.prepareWrite(GFN * PAGE_SIZE, 2 * PAGE_SIZE);
    assertEquals(told, [GFN, GFN + 1], "the checkpoint keeps the old contents of both pages");
    assert(!writeProtected(mem, GFN) && !writeProtected(mem, GFN + 1), "still protected");
    assert(writeProtected(mem, GFN + 2), "a page the VMM does not write stays protected");
    main.protect([[0, mem.pages]], false);
    main.onWriteProtected = undefined;
    main.close();
    main.protect([[GFN, 1]], true);
    mem.prepareWrite(GFN * PAGE_SIZE, 8);
    assertEquals(told.length, 2, "a closed pager is told nothing");
    main.protect([[GFN, 1]], false);
  } finally {
    uffd.unregister(mem.hostAddr, mem.size);
    uffd.close();
  }
});
