/**
 * The dirty log against what a precopy round or a split migration does with it: the VMM reads the
 * log and copies what it names while the guest keeps writing. Whatever the interleaving, a page the
 * guest changed after the VMM's last copy of it must be named by a later read of the log. (On the
 * emulated CPU the store hook runs before the store lands, so the shim marks each store's pages
 * again once it has landed; the window it closes is too short for this test to hit by chance.)
 */
import { assert } from "./helpers/assert.ts";
import { TEST_ACCEL } from "./helpers/accel.ts";
import { Vm } from "../src/vmm/vm.ts";
import { bootMemstamp } from "../src/vmm/guests/memstamp/boot.ts";
import { MemstampControl } from "../src/vmm/guests/memstamp/memstamp.ts";

const PAGE = 4096;

Deno.test(`copying what the dirty log names, as fast as it can be read, never keeps a stale page (${TEST_ACCEL})`, async () => {
  const memSize = 16 << 20;
  const vm = Vm.create({ name: "dirty-race", memSize, vcpus: 2 }, { devices: () => [] });
  // A small working set rewritten at random: every page is hit again and again during the loop.
  bootMemstamp(vm, { memSize, vcpus: 2, pattern: "random", workingSet: 8 * PAGE, timerHz: 0 });
  const ctl = new MemstampControl(vm.memory);
  const mem = vm.memory.view();
  const copy = new Uint8Array(memSize);
  try {
    await vm.start();
    await ctl.waitStamped(120_000);
    vm.dirtyBitmap();
    copy.set(mem);
    let reads = 0, copied = 0;
    const until = performance.now() + 4000;
    // Reads and copies back to back, the way a precopy round does, yielding now and then only.
    while (performance.now() < until) {
      const bits = vm.dirtyBitmap();
      reads++;
      for (let i = 0; i < bits.length; i++) {
        if (!bits[i]) continue;
        for (let k = 0; k < 8; k++) {
          if (!(bits[i] & (1 << k))) continue;
          const g = i * 8 + k;
          copy.set(mem.subarray(g * PAGE, (g + 1) * PAGE), g * PAGE);
          copied++;
        }
      }
      if (reads % 256 === 0) await new Promise((r) => setTimeout(r, 0));
    }
    await vm.pause();
    const last = vm.dirtyBitmap();
    for (let i = 0; i < last.length; i++) {
      for (let k = 0; k < 8; k++) {
        if (!(last[i] & (1 << k))) continue;
        const g = i * 8 + k;
        copy.set(mem.subarray(g * PAGE, (g + 1) * PAGE), g * PAGE);
      }
    }
    for (let g = 0; g < memSize / PAGE; g++) {
      const a = mem.subarray(g * PAGE, (g + 1) * PAGE), b = copy.subarray(g * PAGE, (g + 1) * PAGE);
      for (let j = 0; j < PAGE; j += 8) {
        assert(
          a[j] === b[j] && a[j + 1] === b[j + 1] && a[j + 8 - 1] === b[j + 8 - 1] &&
            a.subarray(j, j + 8).every((x, n) => x === b[j + n]),
          `page ${g} changed after its last copy and no read of the log named it again (${reads} reads, ${copied} pages copied)`,
        );
      }
    }
    console.log(`  ${reads} reads of the log, ${copied} pages copied, no stale page`);
  } finally {
    await vm.stop();
  }
});
