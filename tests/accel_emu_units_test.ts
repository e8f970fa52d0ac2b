import { assertEquals, assertThrows } from "./helpers/assert.ts";
import { AccelUnavailableError } from "../src/accel/accel.ts";
import { ensureEmuShim } from "../src/accel/emu/shim_build.ts";
import { LapicTimer, timerDivisor } from "../src/accel/emu/lapic_timer.ts";
import { segmentFlags, segmentFromFlags, segmentFromGdt } from "../src/accel/emu/descriptors.ts";
import { LAPIC_PAGE_BYTES, LAPIC_REG } from "../src/accel/cpu_state.ts";

function lapic(regs: Record<number, number>): Uint8Array {
  const page = new Uint8Array(LAPIC_PAGE_BYTES);
  const dv = new DataView(page.buffer);
  for (const [off, v] of Object.entries(regs)) dv.setUint32(Number(off), v, true);
  return page;
}

Deno.test("the LAPIC divide configuration maps to the SDM's divisors", () => {
  assertEquals([0, 1, 2, 3, 8, 9, 10, 11].map(timerDivisor), [2, 4, 8, 16, 32, 64, 128, 1]);
});

Deno.test("a periodic LAPIC timer fires once per period and does not catch up after a pause", () => {
  const page = lapic({
    [LAPIC_REG.SVR]: 0x1ff,
    [LAPIC_REG.LVT_TIMER]: 0x20000 | 0xec,
    [LAPIC_REG.TIMER_DIVIDE]: 0xb,
    [LAPIC_REG.TIMER_INITIAL]: 10_000_000,
  });
  const t = new LapicTimer(page);
  t.arm(1_000n);
  assertEquals(t.deadline, 10_001_000n);
  t.poll(10_000_999n);
  assertEquals(t.pending, false);
  t.poll(10_001_000n);
  assertEquals([t.pending, t.vector, t.deadline], [true, 0xec, 20_001_000n]);
  t.delivered();
  t.poll(95_000_000n);
  assertEquals([t.pending, t.deadline], [true, 105_000_000n]);
  t.saveCurrentCount(100_000_000n);
  assertEquals(new DataView(page.buffer).getUint32(LAPIC_REG.TIMER_CURRENT, true), 5_000_000);
});

Deno.test("a restored LAPIC timer first fires after its saved current count", () => {
  const page = lapic({
    [LAPIC_REG.SVR]: 0x1ff,
    [LAPIC_REG.LVT_TIMER]: 0x20000 | 0xec,
    [LAPIC_REG.TIMER_DIVIDE]: 0xb,
    [LAPIC_REG.TIMER_INITIAL]: 10_000_000,
    [LAPIC_REG.TIMER_CURRENT]: 2_500_000,
  });
  const t = new LapicTimer(page);
  t.arm(0n);
  assertEquals(t.deadline, 2_500_000n);
});

Deno.test("a masked timer or a software-disabled APIC never fires", () => {
  for (
    const regs of [{ [LAPIC_REG.SVR]: 0x1ff, [LAPIC_REG.LVT_TIMER]: 0x30000 | 0xec }, {
      [LAPIC_REG.SVR]: 0xff,
      [LAPIC_REG.LVT_TIMER]: 0x20000 | 0xec,
    }]
  ) {
    const t = new LapicTimer(lapic({ ...regs, [LAPIC_REG.TIMER_INITIAL]: 1000 }));
    t.arm(0n);
    assertEquals(t.deadline, 0n);
  }
});

Deno.test("GDT descriptors decode to the cached segments KVM reports, system ones with 64-bit bases", () => {
  const gdt = new Uint8Array(64);
  const dv = new DataView(gdt.buffer);
  dv.setBigUint64(8, 0x00af9b000000ffffn, true); // 64-bit ring-0 code
  dv.setBigUint64(16, 0x00cff3000000ffffn, true); // ring-3 data
  dv.setBigUint64(24, 0x00008b0080000067n | (0x12n << 56n), true); // TSS low: base 0x12008000
  dv.setBigUint64(32, 0x00000001n, true); // TSS high: base bits 32-63 = 1
  const read = (a: bigint, n: number) => gdt.subarray(Number(a), Number(a) + n);
  const code = segmentFromGdt(0x08, 0n, 63, read);
  assertEquals(
    [code.type, code.dpl, code.l, code.db, code.g, code.limit, code.present],
    [0xb, 0, 1, 0, 1, 0xffffffff, 1],
  );
  const data = segmentFromGdt(0x13, 0n, 63, read);
  assertEquals([data.selector, data.type, data.dpl, data.db, data.l], [0x13, 3, 3, 1, 0]);
  const tss = segmentFromGdt(0x18, 0n, 63, read);
  assertEquals([tss.base, tss.limit, tss.type, tss.s], [0x1_1200_8000n, 0x67, 0xb, 0]);
  assertEquals(segmentFromGdt(0, 0n, 63, read).unusable, 1);
  assertEquals(segmentFromGdt(0x48, 0n, 63, read).unusable, 1);
});

Deno.test("QEMU segment flags round-trip through the neutral segment", () => {
  const tss = segmentFromFlags(0x28, 0x8000n, 0x67, 0x8b00);
  assertEquals([tss.type, tss.present, tss.s, tss.dpl], [0xb, 1, 0, 0]);
  assertEquals(segmentFlags(tss), 0x8b00);
});

Deno.test("the shim is built private to its user, and a cache another user could write is refused", () => {
  const before = Deno.env.get("DCRES_CACHE_DIR");
  const dir = Deno.makeTempDirSync({ prefix: "dcres-cache-" });
  try {
    Deno.env.set("DCRES_CACHE_DIR", `${dir}/own`);
    const built = ensureEmuShim();
    assertEquals((Deno.statSync(built).mode ?? 0) & 0o777, 0o700);
    assertEquals(ensureEmuShim(), built);
    Deno.chmodSync(built, 0o722);
    assertThrows(() => ensureEmuShim(), AccelUnavailableError, "not private");
    Deno.mkdirSync(`${dir}/open`, { mode: 0o700 });
    Deno.chmodSync(`${dir}/open`, 0o777);
    Deno.env.set("DCRES_CACHE_DIR", `${dir}/open`);
    assertThrows(() => ensureEmuShim(), AccelUnavailableError, "not private");
  } finally {
    if (before === undefined) Deno.env.delete("DCRES_CACHE_DIR");
    else Deno.env.set("DCRES_CACHE_DIR", before);
    Deno.removeSync(dir, { recursive: true });
  }
});
