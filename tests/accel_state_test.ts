/**
 * The neutral machine state (docs/FORMAT.md section 12) against KVM's structs, without /dev/kvm:
 * a neutral `CpuState` or `PlatformState` converted to KVM's structs (src/accel/kvm/kvm_state.ts),
 * encoded into the bytes the ioctls take (src/ffi/kvm_abi.ts), decoded as if KVM handed the same
 * bytes back and converted back, is the state it was, under the rule kvm_state.ts states:
 *
 * - present parts come back field for field, except KVM's fixed-size arrays, which come back whole:
 *   `xcrs.xcrs` as 16 entries (those past the neutral list `{xcr: 0, value: 0n}`) and `xsave`
 *   zero-padded to 4096 bytes (`KVM_XSAVE_SIZE`);
 * - a field missing from a present part (a state from an older writer) comes back as KVM's zero
 *   value for that field (arrays entry by entry); a field KVM's struct lacks is dropped;
 * - an absent optional part (`xsave`, `xcrs`, `events`, `debugregs`, `cpuid`) yields no struct and
 *   so comes back absent: `KVM_SET_*` is not issued and the vCPU keeps its reset value, which a
 *   later save would report (not testable here);
 * - the platform's chips and PIT come back unchanged; of the clock only the guest time travels
 *   (`flags`, `realtime`, `host_tsc` come back 0).
 *
 * The two accelerators' shapes against each other are in accel_cross_state_test.ts.
 */
import fc from "fast-check";
import { assertEquals } from "./helpers/assert.ts";
import * as abi from "../src/ffi/kvm_abi.ts";
import { throughKvm, wire } from "./helpers/kvm_wire.ts";
import { emuSavedMemstamp } from "./helpers/emu_state.ts";
import type { StructCodec } from "../src/ffi/struct.ts";
import {
  type CpuidEntry,
  type CpuState,
  type DebugRegisters,
  type DescriptorTable,
  LAPIC_PAGE_BYTES,
  MP_STATE,
  type MsrEntry,
  type PlatformState,
  type Registers,
  type Segment,
  type SpecialRegisters,
  type VcpuEvents,
  type XcrsState,
} from "../src/accel/cpu_state.ts";
import {
  chipOf,
  cpuStateOf,
  kvmClockOf,
  kvmCpuidOf,
  kvmDebugregsOf,
  kvmEventsOf,
  kvmMsrsOf,
  kvmPitOf,
  kvmRegsOf,
  kvmSregsOf,
  kvmStateOf,
  kvmXcrsOf,
  platformOf,
} from "../src/accel/kvm/kvm_state.ts";

const RUNS = 200;

// ---------------------------------------------------------------------------------------------
// Arbitraries: neutral states in their valid ranges.

const u8 = fc.integer({ min: 0, max: 0xff });
const u16 = fc.integer({ min: 0, max: 0xffff });
const u32 = fc.integer({ min: 0, max: 0xffff_ffff });
const u64 = fc.bigInt({ min: 0n, max: 2n ** 64n - 1n });
const i64 = fc.bigInt({ min: -(2n ** 63n), max: 2n ** 63n - 1n });
const bit = fc.integer({ min: 0, max: 1 });
const bytes = (n: number) => fc.uint8Array({ minLength: n, maxLength: n });

/** A record arbitrary with ordinary prototypes (deepStrictEqual compares them). */
function rec<T>(model: { [K in keyof T]: fc.Arbitrary<T[K]> }): fc.Arbitrary<T> {
  return fc.record(model, { noNullPrototype: true }) as fc.Arbitrary<T>;
}

const REG_NAMES = [
  "rax",
  "rbx",
  "rcx",
  "rdx",
  "rsi",
  "rdi",
  "rsp",
  "rbp",
  "r8",
  "r9",
  "r10",
  "r11",
  "r12",
  "r13",
  "r14",
  "r15",
  "rip",
  "rflags",
] as const satisfies ReadonlyArray<keyof Registers>;

const registers: fc.Arbitrary<Registers> = rec<Registers>(
  Object.fromEntries(REG_NAMES.map((n) => [n, u64])) as {
    [K in keyof Registers]: fc.Arbitrary<bigint>;
  },
);

const segment: fc.Arbitrary<Segment> = rec<Segment>({
  base: u64,
  limit: u32,
  selector: u16,
  type: fc.integer({ min: 0, max: 15 }),
  present: bit,
  dpl: fc.integer({ min: 0, max: 3 }),
  db: bit,
  s: bit,
  l: bit,
  g: bit,
  avl: bit,
  unusable: bit,
});

const dtable: fc.Arbitrary<DescriptorTable> = rec<DescriptorTable>({ base: u64, limit: u16 });

const sregs: fc.Arbitrary<SpecialRegisters> = rec<SpecialRegisters>({
  cs: segment,
  ds: segment,
  es: segment,
  fs: segment,
  gs: segment,
  ss: segment,
  tr: segment,
  ldt: segment,
  gdt: dtable,
  idt: dtable,
  cr0: u64,
  cr2: u64,
  cr3: u64,
  cr4: u64,
  cr8: u64,
  efer: u64,
  apic_base: u64,
  interrupt_bitmap: fc.array(u64, { minLength: 4, maxLength: 4 }),
});

const msr: fc.Arbitrary<MsrEntry> = rec<MsrEntry>({ index: u32, data: u64 });

const xcrs: fc.Arbitrary<XcrsState> = rec<XcrsState>({
  nr_xcrs: fc.integer({ min: 0, max: 16 }),
  flags: u32,
  xcrs: fc.array(rec({ xcr: u32, value: u64 }), { maxLength: 16 }),
});

const events: fc.Arbitrary<VcpuEvents> = rec<VcpuEvents>({
  exception: rec({ injected: u8, nr: u8, has_error_code: u8, pending: u8, error_code: u32 }),
  interrupt: rec({ injected: u8, nr: u8, soft: u8, shadow: u8 }),
  nmi: rec({ injected: u8, pending: u8, masked: u8 }),
  sipi_vector: u32,
  flags: u32,
  smi: rec({ smm: u8, pending: u8, smm_inside_nmi: u8, latched_init: u8 }),
  triple_fault: rec({ pending: u8 }),
  exception_has_payload: u8,
  exception_payload: u64,
});

const debugregs: fc.Arbitrary<DebugRegisters> = rec<DebugRegisters>({
  db: fc.array(u64, { minLength: 4, maxLength: 4 }),
  dr6: u64,
  dr7: u64,
  flags: u64,
});

const cpuidEntry: fc.Arbitrary<CpuidEntry> = rec<CpuidEntry>({
  function: u32,
  index: u32,
  flags: u32,
  eax: u32,
  ebx: u32,
  ecx: u32,
  edx: u32,
});

/** An XSAVE area: at least the legacy region and header (576 bytes), up to an AMX-sized one. */
const xsave = fc.integer({ min: 576, max: 12288 }).chain(bytes);

const cpuState: fc.Arbitrary<CpuState> = fc.record({
  index: fc.integer({ min: 0, max: 255 }),
  regs: registers,
  sregs,
  msrs: fc.array(msr, { maxLength: 40 }),
  lapic: bytes(LAPIC_PAGE_BYTES),
  mpState: fc.constantFrom(...Object.values(MP_STATE)),
  xsave,
  xcrs,
  events,
  debugregs,
  cpuid: fc.array(cpuidEntry, { maxLength: 40 }),
}, {
  requiredKeys: ["index", "regs", "sregs", "msrs", "lapic", "mpState"],
  noNullPrototype: true,
});

const pitChannel = rec({
  count: u32,
  latched_count: u16,
  count_latched: u8,
  status_latched: u8,
  status: u8,
  read_state: u8,
  write_state: u8,
  write_latch: u8,
  rw_mode: u8,
  mode: u8,
  bcd: u8,
  gate: u8,
  count_load_time: i64,
});

const platform: fc.Arbitrary<PlatformState> = fc.record({
  irqchip: rec({ picMaster: bytes(512), picSlave: bytes(512), ioapic: bytes(512) }),
  pit: rec({ channels: fc.array(pitChannel, { minLength: 3, maxLength: 3 }), flags: u32 }),
  clock: fc.record({ clock: u64, flags: u32, realtime: u64, host_tsc: u64 }, {
    requiredKeys: ["clock"],
    noNullPrototype: true,
  }),
}, { requiredKeys: [], noNullPrototype: true });

// ---------------------------------------------------------------------------------------------
// Through the ioctl buffers: encode as KVM_SET_* takes the struct, decode as KVM_GET_* returns it.

/**
 * A platform through KVM_SET_IRQCHIP/PIT2/CLOCK and back as KVM_GET_* return them, into the neutral
 * form by `platformOf` as KvmVm.savePlatform does (parts `p` lacks are left out again).
 */
function platformThroughKvm(p: PlatformState): PlatformState {
  const chip = (id: number, bytes: Uint8Array = new Uint8Array()) =>
    wire(abi.kvmIrqchip, { chip_id: id, chip: chipOf(bytes) }).chip;
  const back = platformOf({
    irqchip: {
      picMaster: chip(abi.IRQCHIP.PIC_MASTER, p.irqchip?.picMaster),
      picSlave: chip(abi.IRQCHIP.PIC_SLAVE, p.irqchip?.picSlave),
      ioapic: chip(abi.IRQCHIP.IOAPIC, p.irqchip?.ioapic),
    },
    pit: wire(abi.kvmPitState2, kvmPitOf(p.pit ?? {})),
    clock: wire(abi.kvmClockData, kvmClockOf(p.clock ?? { clock: 0n })),
  });
  for (const part of ["irqchip", "pit", "clock"] as const) if (!(part in p)) delete back[part];
  return back;
}

/**
 * `value` with every byte array replaced by its length and an FNV-1a hash, so that comparing and
 * shrinking states with 12 KiB XSAVE areas stays fast and a failure's diff stays readable.
 */
function brief(value: unknown): unknown {
  if (value instanceof Uint8Array) {
    let h = 0x811c9dc5;
    for (const b of value) h = Math.imul(h ^ b, 0x01000193) >>> 0;
    return `${value.length} bytes #${h.toString(16).padStart(8, "0")}`;
  }
  if (Array.isArray(value)) return value.map(brief);
  if (typeof value === "object" && value !== null) {
    return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, brief(v)]));
  }
  return value;
}

/** Equality of two states, byte arrays compared through `brief`. */
function assertSameState<T>(actual: T, expected: T, msg?: string): void {
  assertEquals(brief(actual), brief(expected), msg);
}

/** The rule of the header comment: what the round trip returns for `s`. */
function expectedBack(s: CpuState): CpuState {
  const out: CpuState = { ...s };
  if (s.xsave) {
    out.xsave = new Uint8Array(Math.max(s.xsave.length, abi.KVM_XSAVE_SIZE));
    out.xsave.set(s.xsave);
  }
  if (s.xcrs) out.xcrs = { ...s.xcrs, xcrs: pad16(s.xcrs.xcrs) };
  return out;
}

Deno.test("a neutral vCPU state survives KVM's structs and their ioctl buffers", () => {
  fc.assert(
    fc.property(cpuState, (s) => {
      const k = kvmStateOf(s);
      // Absent parts issue no KVM_SET_*; present ones do.
      for (const part of ["xsave", "xcrs", "events", "debugregs", "cpuid"] as const) {
        assertEquals(part in k, part in s, part);
      }
      assertSameState(cpuStateOf(throughKvm(k)), expectedBack(s));
    }),
    { numRuns: RUNS },
  );
});

Deno.test("a state KVM saved is neutral as it is: a second round trip changes nothing", () => {
  fc.assert(
    fc.property(cpuState, (s) => {
      const once = cpuStateOf(throughKvm(kvmStateOf(s)));
      assertSameState(cpuStateOf(throughKvm(kvmStateOf(once))), once);
    }),
    { numRuns: 50 },
  );
});

/** `value` without the keys in `drop`. */
function omit<T extends object>(value: T, drop: string[]): Partial<T> {
  return Object.fromEntries(Object.entries(value).filter(([k]) => !drop.includes(k))) as Partial<T>;
}

/** `xcrs` as KVM's 16 entries. */
function pad16(xcrs: XcrsState["xcrs"]): XcrsState["xcrs"] {
  return [...xcrs, ...Array.from({ length: 16 - xcrs.length }, () => ({ xcr: 0, value: 0n }))];
}

/**
 * Any fields dropped from a `part` and an unknown one added: the struct that reaches KVM has KVM's
 * zero value in the dropped fields, the others as given, and no unknown field.
 */
function fillsFromZero<T extends object, K extends object>(
  name: string,
  part: fc.Arbitrary<T>,
  codec: StructCodec<K>,
  of: (value: T) => K,
): void {
  const arb = part.chain((v) => fc.tuple(fc.constant(v), fc.subarray(Object.keys(v))));
  fc.assert(
    fc.property(arb, ([value, drop]) => {
      const kept = omit(value, drop) as Record<string, unknown>;
      const back = wire(codec, of({ ...kept, fromTheFuture: 1 } as unknown as T));
      const expected: Record<string, unknown> = { ...codec.zero(), ...kept };
      if (name === "xcrs" && "xcrs" in kept) expected.xcrs = pad16(kept.xcrs as XcrsState["xcrs"]);
      assertEquals<unknown>(back, expected, `${name} without ${drop.join(", ") || "nothing"}`);
    }),
    { numRuns: 100 },
  );
}

Deno.test("fields missing from a present part come back as KVM's zero value; extra fields drop", () => {
  fillsFromZero("regs", registers, abi.kvmRegs, kvmRegsOf);
  fillsFromZero("sregs", sregs, abi.kvmSregs, kvmSregsOf);
  fillsFromZero("segment", segment, abi.kvmSegment, (g) => kvmSregsOf({ cs: g } as never).cs);
  fillsFromZero("xcrs", xcrs, abi.kvmXcrs, kvmXcrsOf);
  fillsFromZero("events", events, abi.kvmVcpuEvents, kvmEventsOf);
  fillsFromZero("debugregs", debugregs, abi.kvmDebugregs, kvmDebugregsOf);
  fillsFromZero("msr", msr, abi.kvmMsrEntry, (m) => kvmMsrsOf([m])[0]);
  fillsFromZero("cpuid", cpuidEntry, abi.kvmCpuidEntry2, (e) => kvmCpuidOf([e])[0]);
  fillsFromZero("pit", platform.map((p) => p.pit ?? {}), abi.kvmPitState2, kvmPitOf);
});

Deno.test("short arrays, LAPIC pages and chips are filled entry by entry from KVM's zero value", () => {
  const s = { ...abi.kvmSregs.zero(), interrupt_bitmap: [5n] };
  assertEquals(wire(abi.kvmSregs, kvmSregsOf(s)).interrupt_bitmap, [5n, 0n, 0n, 0n]);
  const d = { db: [1n, 2n], dr6: 0xffff0ff0n, dr7: 0x400n, flags: 0n };
  assertEquals(wire(abi.kvmDebugregs, kvmDebugregsOf(d)).db, [1n, 2n, 0n, 0n]);
  const x = wire(abi.kvmXcrs, kvmXcrsOf({ nr_xcrs: 1, flags: 0, xcrs: [{ xcr: 0, value: 7n }] }));
  assertEquals(x.nr_xcrs, 1);
  assertEquals(x.xcrs.length, 16);
  assertEquals(x.xcrs[0], { xcr: 0, value: 7n });
  const short = { ...emuSavedMemstamp(0), lapic: new Uint8Array([1, 2, 3]) };
  const lapic = throughKvm(kvmStateOf(short)).lapic.regs;
  assertEquals(lapic.length, LAPIC_PAGE_BYTES);
  assertEquals([...lapic.subarray(0, 4)], [1, 2, 3, 0]);
  assertEquals(chipOf(new Uint8Array([9])).length, 512);
});

Deno.test("a neutral platform survives KVM's chip, PIT and clock structs; of the clock, the time", () => {
  fc.assert(
    fc.property(platform, (p) => {
      const expected: PlatformState = { ...p };
      if (p.clock) expected.clock = { clock: p.clock.clock, flags: 0, realtime: 0n, host_tsc: 0n };
      assertSameState(platformThroughKvm(p), expected);
    }),
    { numRuns: RUNS },
  );
});
