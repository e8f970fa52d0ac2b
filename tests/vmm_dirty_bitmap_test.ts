/**
 * Pages the VMM writes itself reach the dirty bitmap: no accelerator's dirty log sees them, so
 * `GuestMemory` records them and `Vm.dirtyBitmap` ORs them into the accelerator's log (here a fake
 * accelerator, so no guest runs). `guest verify` writes memstamp's config page that way.
 */
import { assert, assertEquals } from "./helpers/assert.ts";
import type { Accelerator, AccelVcpu, AccelVm } from "../src/accel/accel.ts";
import { GuestMemory } from "../src/memory/guest_memory.ts";
import { Vm } from "../src/vmm/vm.ts";
import { MemstampControl } from "../src/vmm/guests/memstamp/memstamp.ts";
import { CFG, LAYOUT } from "../src/vmm/guests/memstamp/layout.ts";

const PAGE = 4096;
const MiB = 1 << 20;

/** The page numbers whose bits are set in `bitmap`. */
function pagesOf(bitmap: Uint8Array): number[] {
  const out: number[] = [];
  bitmap.forEach((b, i) => {
    for (let k = 0; k < 8; k++) if (b & (1 << k)) out.push(i * 8 + k);
  });
  return out;
}

Deno.test("markWritten records every page a range touches; takeWritten ORs them in once", () => {
  const mem = GuestMemory.create(MiB, "dirty-test");
  try {
    const bitmap = new Uint8Array(Math.ceil(mem.pages / 64) * 8);
    mem.markWritten(3 * PAGE + 4000, 200); // straddles pages 3 and 4
    mem.markWritten(100 * PAGE, 1);
    bitmap[0] = 0b1; // a bit already there stays
    mem.takeWritten(bitmap);
    assertEquals(pagesOf(bitmap), [0, 3, 4, 100]);
    const again = new Uint8Array(bitmap.length);
    mem.takeWritten(again);
    assertEquals(pagesOf(again), [], "taken once, then forgotten");
  } finally {
    mem.close();
  }
});

/** An accelerator whose dirty log always reports page 0 and whose vCPUs never run. */
function fakeAccelerator(): Accelerator {
  const vcpu = (index: number): AccelVcpu => ({
    index,
    worker: () => ({ url: "", init: {} }),
    attach: () => {},
    kick: () => {},
    save: () => {
      throw new Error("not needed");
    },
    load: () => {},
    close: () => {},
  });
  const vm: AccelVm = {
    kind: "emu",
    createVcpu: vcpu,
    setIrq: () => {},
    harvestDirty: (bitmap) => void (bitmap[0] |= 1),
    savePlatform: () => ({}),
    loadPlatform: () => {},
    close: () => {},
  };
  return {
    kind: "emu",
    capabilities: { fastGuestKernel: false, linuxGuest: false, description: "a fake" },
    createVm: () => vm,
  };
}

Deno.test("Vm.dirtyBitmap is the accelerator's log ORed with the pages the VMM wrote", async () => {
  const vm = Vm.create({ name: "dirty", memSize: MiB, vcpus: 1 }, {
    accel: fakeAccelerator(),
    devices: () => [],
  });
  try {
    assertEquals(vm.accelKind, "emu");
    vm.memory.markWritten(5 * PAGE, 8);
    assertEquals(pagesOf(vm.dirtyBitmap()), [0, 5]);
    assertEquals(pagesOf(vm.dirtyBitmap()), [0], "the VMM's pages are reported once");
  } finally {
    await vm.stop();
  }
});

Deno.test("guest verify marks memstamp's config page written (its command sequence changed)", async () => {
  const mem = GuestMemory.create(MiB, "verify-test");
  try {
    mem.u64(LAYOUT.CONFIG, 16)[CFG.NVCPUS / 8] = 1n; // one vCPU that never answers
    const failed = await new MemstampControl(mem).verify(1).then(() => false, () => true);
    assert(failed, "no guest answers here: verify times out after writing its command");
    const bitmap = new Uint8Array(Math.ceil(mem.pages / 64) * 8);
    mem.takeWritten(bitmap);
    assertEquals(pagesOf(bitmap), [LAYOUT.CONFIG / PAGE]);
  } finally {
    mem.close();
  }
});
