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
 * Then the two accelerators' shapes against each other: a state as the emulated CPU saves it for
 * memstamp converts to sregs, regs and MSRs that KVM accepts (its KVM_SET_SREGS checks and the VMX
 * guest-state checks of the first KVM_RUN, written out below), and a state as KVM saves it, with
 * its platform, is what the emulated CPU's load path takes (checked by the type checker).
 */
import fc from "fast-check";
import { assert, assertEquals } from "./helpers/assert.ts";
import * as abi from "../src/ffi/kvm_abi.ts";
import type { StructCodec } from "../src/ffi/struct.ts";
import {
  type CpuidEntry,
  type CpuState,
  type DebugRegisters,
  type DescriptorTable,
  LAPIC_PAGE_BYTES,
  LAPIC_REG,
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
  type KvmCpuState,
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
import type { AccelVm } from "../src/accel/accel.ts";
import { segmentFlags, segmentFromFlags, segmentFromGdt } from "../src/accel/emu/descriptors.ts";
import type { EmuCpu } from "../src/accel/emu/emu_cpu.ts";
import { EmuVcpu } from "../src/accel/emu/emu_vcpu.ts";
import type { EmuWorkerInit } from "../src/accel/emu/snapshot.ts";
import { LAYOUT, SEL, statusAddr, TSS_LIMIT, writeGdt } from "../src/vmm/guests/memstamp/layout.ts";
import { initialSregs } from "../src/vmm/guests/memstamp/memstamp.ts";

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

/** `value` encoded and decoded with `codec`. */
function wire<T>(codec: StructCodec<T>, value: T): T {
  const buf = codec.encode(value);
  assertEquals(buf.length, codec.size);
  return codec.decode(buf);
}

/** A variable-length list in its ioctl buffer (`kvm_msrs`, `kvm_cpuid2`): count, then entries. */
function wireList<H, E>(
  header: StructCodec<H>,
  count: keyof H,
  entry: StructCodec<E>,
  list: E[],
): E[] {
  const buf = new Uint8Array(header.size + list.length * entry.size);
  buf.set(header.encode({ ...header.zero(), [count]: list.length }));
  list.forEach((e, i) => buf.set(entry.encode(e), header.size + i * entry.size));
  const n = header.decode(buf)[count] as number;
  return Array.from(
    { length: n },
    (_, i) => entry.decode(buf.subarray(header.size + i * entry.size)),
  );
}

/** Every struct of `k` through its ioctl buffer (the XSAVE region is bytes already). */
function throughKvm(k: KvmCpuState): KvmCpuState {
  const out: KvmCpuState = {
    index: k.index,
    regs: wire(abi.kvmRegs, k.regs),
    sregs: wire(abi.kvmSregs, k.sregs),
    msrs: wireList(abi.kvmMsrsHeader, "nmsrs", abi.kvmMsrEntry, k.msrs),
    lapic: wire(abi.kvmLapicState, k.lapic),
    mpState: wire(abi.kvmMpState, { mp_state: k.mpState }).mp_state,
  };
  if (k.xsave) out.xsave = k.xsave.slice();
  if (k.xcrs) out.xcrs = wire(abi.kvmXcrs, k.xcrs);
  if (k.events) out.events = wire(abi.kvmVcpuEvents, k.events);
  if (k.debugregs) out.debugregs = wire(abi.kvmDebugregs, k.debugregs);
  if (k.cpuid) out.cpuid = wireList(abi.kvmCpuid2Header, "nent", abi.kvmCpuidEntry2, k.cpuid);
  return out;
}

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

// ---------------------------------------------------------------------------------------------
// The emulated CPU's state on KVM.

const CR0 = { PE: 1n, NW: 1n << 29n, CD: 1n << 30n, PG: 1n << 31n };
const CR4_PAE = 1n << 5n;
/** CR4 bits every x86-64 KVM host supports: VME ... OSXMMEXCPT. */
const CR4_BASELINE = (1n << 11n) - 1n;
const EFER = { SCE: 1n, LME: 1n << 8n, LMA: 1n << 10n, NXE: 1n << 11n };
const APIC_BASE = { BSP: 1n << 8n, X2APIC: 1n << 10n, ENABLE: 1n << 11n, ADDR: 0xfee00000n };
/** The smallest MAXPHYADDR of an x86-64 host: physical addresses KVM takes on any of them. */
const MIN_MAXPHYADDR = 36n;
const RFLAGS = { FIXED: 2n, VM: 1n << 17n, RESERVED: (1n << 3n) | (1n << 5n) | (1n << 15n) };
const MSR = {
  SYSENTER_CS: 0x174,
  SYSENTER_ESP: 0x175,
  SYSENTER_EIP: 0x176,
  PAT: 0x277,
  STAR: 0xc0000081,
  LSTAR: 0xc0000082,
  CSTAR: 0xc0000083,
  SFMASK: 0xc0000084,
};

const canonical = (a: bigint) => {
  const top = BigInt.asUintN(64, a) >> 47n;
  return top === 0n || top === (1n << 17n) - 1n;
};

/**
 * Why KVM would refuse `k` on x86-64 hardware (empty: it would not). KVM_SET_SREGS's own checks
 * (kvm_is_valid_sregs, kvm_is_valid_cr0/cr4, kvm_set_apic_base), the KVM_SET_MSRS checks for the
 * MSRs the emulated CPU saves (canonical addresses, PAT memory types), and the VMX guest-state
 * checks the first KVM_RUN applies to registers and segments (Intel SDM vol. 3, 28.3.1), for a
 * vCPU in 64-bit mode.
 */
function kvmRefusals(k: KvmCpuState): string[] {
  const out: string[] = [];
  const no = (cond: boolean, why: string) => cond || out.push(why);
  const s = k.sregs;
  const longMode = (s.efer & EFER.LME) !== 0n && (s.cr0 & CR0.PG) !== 0n;
  // kvm_is_valid_sregs
  if (longMode) {
    no((s.cr4 & CR4_PAE) !== 0n, "long mode without CR4.PAE");
    no((s.efer & EFER.LMA) !== 0n, "EFER.LME and CR0.PG without EFER.LMA");
    no(s.cr3 >> MIN_MAXPHYADDR === 0n, "CR3 above MAXPHYADDR");
  } else {
    no((s.efer & EFER.LMA) === 0n, "EFER.LMA outside long mode");
    no(s.cs.l === 0, "CS.L outside long mode");
  }
  no(s.cr0 >> 32n === 0n, "CR0 bits 63:32");
  no((s.cr0 & CR0.NW) === 0n || (s.cr0 & CR0.CD) !== 0n, "CR0.NW without CR0.CD");
  no((s.cr0 & CR0.PG) === 0n || (s.cr0 & CR0.PE) !== 0n, "CR0.PG without CR0.PE");
  no((s.cr4 & ~CR4_BASELINE) === 0n, `CR4 0x${s.cr4.toString(16)} beyond the baseline bits`);
  no((s.efer & ~(EFER.SCE | EFER.LME | EFER.LMA | EFER.NXE)) === 0n, "EFER reserved bits");
  // kvm_set_apic_base (host-initiated): reserved bits; an enabled xAPIC at its usual address.
  const apic = s.apic_base;
  no((apic & 0x2ffn) === 0n && (apic & APIC_BASE.X2APIC) === 0n, "APIC base reserved bits");
  no(apic >> MIN_MAXPHYADDR === 0n, "APIC base above MAXPHYADDR");
  no((apic & APIC_BASE.ENABLE) !== 0n, "LAPIC disabled in IA32_APIC_BASE");
  no((apic & ~0xfffn) === APIC_BASE.ADDR, "LAPIC not at 0xfee00000");
  no(((apic & APIC_BASE.BSP) !== 0n) === (k.index === 0), "BSP flag not on vCPU 0 alone");
  no(s.interrupt_bitmap.length === 4, "interrupt_bitmap not 4 words");
  // VMX guest-state checks on segments (64-bit mode, CS.L = 1).
  const usable = (g: abi.KvmSegment) => g.unusable === 0 && g.present === 1;
  const limitFitsG = (g: abi.KvmSegment) =>
    ((g.limit & 0xfff) === 0xfff || g.g === 0) && ((g.limit >>> 20) === 0 || g.g === 1);
  no(longMode && s.cs.l === 1 && s.cs.db === 0, "CS not a 64-bit code segment (L=1, D=0)");
  no(usable(s.cs) && s.cs.s === 1 && [9, 11, 13, 15].includes(s.cs.type), "CS not accessed code");
  no(s.cs.dpl === (s.cs.selector & 3), "CS.DPL differs from the CPL in CS.RPL");
  no(s.cs.base >> 32n === 0n, "CS base bits 63:32");
  no(usable(s.ss), "SS unusable");
  no(s.ss.s === 1 && (s.ss.type === 3 || s.ss.type === 7), "SS not read/write accessed data");
  no(s.ss.dpl === (s.ss.selector & 3) && s.ss.dpl === s.cs.dpl, "SS.DPL differs from the CPL");
  for (const [name, g] of [["ds", s.ds], ["es", s.es], ["fs", s.fs], ["gs", s.gs]] as const) {
    if (name === "fs" || name === "gs") no(canonical(g.base), `${name} base not canonical`);
    else no(g.base >> 32n === 0n, `${name} base bits 63:32`);
    if (g.unusable) continue;
    no(g.present === 1 && g.s === 1 && (g.type & 1) === 1, `${name} not an accessed segment`);
    no((g.type & 8) === 0 || (g.type & 2) !== 0, `${name} execute-only code`);
    no(g.type > 11 || g.dpl >= (g.selector & 3), `${name}.DPL below its RPL`);
  }
  no(usable(s.tr) && s.tr.s === 0 && s.tr.type === 11, "TR not a busy 64-bit TSS");
  no((s.tr.selector & 4) === 0 && canonical(s.tr.base), "TR selector in the LDT or base");
  if (!s.ldt.unusable) {
    no(s.ldt.present === 1 && s.ldt.s === 0 && s.ldt.type === 2, "LDTR not an LDT");
    no((s.ldt.selector & 4) === 0 && canonical(s.ldt.base), "LDTR selector or base");
  }
  for (const [name, g] of Object.entries({ cs: s.cs, ss: s.ss, ds: s.ds, es: s.es, tr: s.tr })) {
    if (!g.unusable) no(limitFitsG(g), `${name} limit ${g.limit} and G=${g.g} disagree`);
  }
  no(canonical(s.gdt.base) && canonical(s.idt.base), "GDTR or IDTR base not canonical");
  // Registers.
  const f = k.regs.rflags;
  no((f & RFLAGS.FIXED) !== 0n && (f & RFLAGS.RESERVED) === 0n && f >> 22n === 0n, "RFLAGS");
  no(!longMode || (f & RFLAGS.VM) === 0n, "RFLAGS.VM in long mode");
  no(canonical(k.regs.rip), "RIP not canonical");
  // MSRs the emulated CPU saves.
  for (const m of k.msrs) {
    const addr = [MSR.SYSENTER_ESP, MSR.SYSENTER_EIP, MSR.LSTAR, MSR.CSTAR].includes(m.index);
    if (addr) no(canonical(m.data), `MSR 0x${m.index.toString(16)} not canonical`);
    if (m.index === MSR.PAT) {
      const types = Array.from({ length: 8 }, (_, i) => Number((m.data >> BigInt(8 * i)) & 0xffn));
      no(types.every((t) => [0, 1, 4, 5, 6, 7].includes(t)), "PAT holds a reserved memory type");
    }
  }
  no(k.mpState === MP_STATE.RUNNABLE || k.mpState === MP_STATE.HALTED, "mp_state");
  no(k.lapic.regs.length === LAPIC_PAGE_BYTES, "LAPIC page size");
  return out;
}

/** Memstamp's GDT limit for two vCPUs. */
const GDT_LIMIT = SEL.tss(2) - 1;

/**
 * vCPU `i` of a two-vCPU memstamp guest as the emulated CPU saves it (EmuCpu.save) while the guest
 * runs its workload, written out by hand: ring 3 with memstamp's flat 64-bit user segments in CS
 * and SS (read back from the GDT), DS/ES/FS/GS null (the emulated CPU's load enters ring 3 through
 * `iretq`, which loads CS and SS only; 64-bit code needs no others), the vCPU's TSS in TR from
 * QEMU's flag word, no LDT, long mode with paging, the LAPIC timer counting down, its eight MSRs,
 * no optional parts. Its LAPIC ID register (0x20) is 0 on every vCPU, as the emulated CPU leaves
 * it: KVM takes that (a vCPU restored from it has xAPIC ID 0; memstamp never reads it).
 */
function emuSavedMemstamp(i: number): CpuState {
  const flat = { base: 0n, limit: 0xffff_ffff, present: 1, s: 1, g: 1, avl: 0, unusable: 0 };
  const nul = {
    base: 0n,
    limit: 0,
    selector: 0,
    type: 0,
    present: 0,
    dpl: 0,
    db: 0,
    s: 0,
    l: 0,
    g: 0,
    avl: 0,
    unusable: 1,
  };
  const lapic = new Uint8Array(LAPIC_PAGE_BYTES);
  const dv = new DataView(lapic.buffer);
  dv.setUint32(LAPIC_REG.SVR, 0x1ff, true);
  dv.setUint32(LAPIC_REG.LVT_TIMER, 0x20040, true);
  dv.setUint32(LAPIC_REG.LVT_LINT0, 0x10000, true);
  dv.setUint32(LAPIC_REG.LVT_LINT1, 0x10000, true);
  dv.setUint32(LAPIC_REG.TIMER_INITIAL, 10_000_000, true);
  dv.setUint32(LAPIC_REG.TIMER_CURRENT, 3_141_592, true);
  dv.setUint32(LAPIC_REG.TIMER_DIVIDE, 0xb, true);
  return {
    index: i,
    regs: {
      rax: 0x1234n,
      rbx: 0x5_6000n,
      rcx: 0n,
      rdx: 0xffff_ffffn,
      rsi: BigInt(statusAddr(i)),
      rdi: BigInt(i),
      rsp: BigInt(LAYOUT.USTACKS + (i + 1) * LAYOUT.STACK_SIZE - 0x48),
      rbp: 0n,
      r8: 0x2d_1000n,
      r9: 7n,
      r10: 0n,
      r11: 0x3246n,
      r12: 0n,
      r13: 0n,
      r14: 0x9e37_79b9_7f4a_7c15n,
      r15: 0x100000n,
      rip: BigInt(LAYOUT.CODE + 0x1a4),
      rflags: 0x3246n,
    },
    sregs: {
      cs: { ...flat, selector: SEL.UCODE, type: 0xb, dpl: 3, db: 0, l: 1 },
      ss: { ...flat, selector: SEL.UDATA, type: 0x3, dpl: 3, db: 1, l: 0 },
      ds: nul,
      es: nul,
      fs: nul,
      gs: nul,
      tr: {
        base: BigInt(LAYOUT.TSS + i * LAYOUT.TSS_STRIDE),
        limit: TSS_LIMIT,
        selector: SEL.tss(i),
        type: 0xb,
        present: 1,
        dpl: 0,
        db: 0,
        s: 0,
        l: 0,
        g: 0,
        avl: 0,
        unusable: 0,
      },
      ldt: nul,
      gdt: { base: BigInt(LAYOUT.GDT), limit: GDT_LIMIT },
      idt: { base: BigInt(LAYOUT.IDT), limit: 256 * 16 - 1 },
      cr0: 0x80050033n,
      cr2: 0n,
      cr3: BigInt(LAYOUT.PML4),
      cr4: 0x620n,
      cr8: 0n,
      efer: 0x500n,
      apic_base: 0xfee00800n | (i === 0 ? 0x100n : 0n),
      interrupt_bitmap: [0n, 0n, 0n, 0n],
    },
    msrs: [
      { index: MSR.SYSENTER_CS, data: 0n },
      { index: MSR.SYSENTER_ESP, data: 0n },
      { index: MSR.SYSENTER_EIP, data: 0n },
      { index: MSR.PAT, data: 0x0007_0406_0007_0406n },
      { index: MSR.STAR, data: 0n },
      { index: MSR.LSTAR, data: 0n },
      { index: MSR.CSTAR, data: 0n },
      { index: MSR.SFMASK, data: 0n },
    ],
    lapic,
    mpState: MP_STATE.RUNNABLE,
  };
}

Deno.test("the hand-written emulated-CPU state is what the emulated CPU reads back for memstamp", () => {
  const ram = new Uint8Array(LAYOUT.GDT + 0x1000);
  assertEquals(writeGdt(ram, 2), GDT_LIMIT);
  const read = (a: bigint, n: number) => ram.subarray(Number(a), Number(a) + n);
  for (const i of [0, 1]) {
    const s = emuSavedMemstamp(i).sregs;
    const fromGdt = (g: Segment) => segmentFromGdt(g.selector, s.gdt.base, s.gdt.limit, read);
    assertEquals(fromGdt(s.cs), s.cs);
    assertEquals(fromGdt(s.ss), s.ss);
    assertEquals(fromGdt(s.ds), s.ds);
    const viaFlags = (g: Segment) => segmentFromFlags(g.selector, g.base, g.limit, segmentFlags(g));
    assertEquals(viaFlags(s.tr), s.tr);
    assertEquals(viaFlags(s.ldt), s.ldt);
    // What memstamp loads (initialSregs) agrees on everything the emulated CPU keeps.
    const loaded = initialSregs(i, s, GDT_LIMIT);
    for (const k of ["cs", "ss", "tr", "gdt", "idt", "cr0", "cr3", "cr4", "efer", "apic_base"]) {
      const key = k as keyof SpecialRegisters;
      assertEquals(s[key], loaded[key], k);
    }
  }
});

Deno.test("a state the emulated CPU saved converts to structs KVM accepts", () => {
  for (const i of [0, 1]) {
    const s = emuSavedMemstamp(i);
    const k = throughKvm(kvmStateOf(s));
    assertEquals(kvmRefusals(k), []);
    assertEquals(k.sregs.cs.l, 1);
    assertEquals(k.sregs.cs.db, 0);
    assertEquals(k.sregs.cs.present, 1);
    assertEquals(k.sregs.ss.dpl, 3);
    assertEquals(k.sregs.tr.type, 11);
    assertEquals(k.sregs.efer & (EFER.LME | EFER.LMA), EFER.LME | EFER.LMA);
    // It carries no optional part, so no KVM_SET_XSAVE, _XCRS, _VCPU_EVENTS, _DEBUGREGS, _CPUID2:
    // KVM keeps its reset values (and the CPUID it set up) for them.
    for (const part of ["xsave", "xcrs", "events", "debugregs", "cpuid"] as const) {
      assert(!(part in k), part);
    }
    assertEquals(cpuStateOf(k), s);
  }
  // memstamp's own boot state (what the VMM loads on either accelerator) passes the same checks.
  const booted = { ...emuSavedMemstamp(0) };
  booted.sregs = initialSregs(0, booted.sregs, GDT_LIMIT);
  assertEquals(kvmRefusals(kvmStateOf(booted)), []);
});

Deno.test("the KVM acceptance check is not vacuous: each planted fault is named", () => {
  const base = emuSavedMemstamp(1);
  const faults: Array<[string, (s: CpuState) => void]> = [
    ["32-bit CS in long mode", (s) => (s.sregs.cs = { ...s.sregs.cs, l: 0, db: 1 })],
    ["CS not present", (s) => (s.sregs.cs = { ...s.sregs.cs, present: 0 })],
    ["CS.DPL 0 with RPL 3", (s) => (s.sregs.cs = { ...s.sregs.cs, dpl: 0 })],
    ["SS null in ring 3", (s) => (s.sregs.ss = { ...s.sregs.ds })],
    ["available TSS", (s) => (s.sregs.tr = { ...s.sregs.tr, type: 9 })],
    ["page-granular TR limit", (s) => (s.sregs.tr = { ...s.sregs.tr, g: 1 })],
    ["LMA cleared", (s) => (s.sregs.efer = EFER.LME)],
    ["PAE cleared", (s) => (s.sregs.cr4 = 0x600n)],
    ["LAPIC disabled", (s) => (s.sregs.apic_base = APIC_BASE.ADDR)],
    ["BSP on vCPU 1", (s) => (s.sregs.apic_base |= APIC_BASE.BSP)],
    ["RFLAGS bit 1 clear", (s) => (s.regs.rflags = 0x3244n)],
    ["non-canonical LSTAR", (s) => (s.msrs = [{ index: MSR.LSTAR, data: 1n << 47n }])],
    ["reserved PAT type", (s) => (s.msrs = [{ index: MSR.PAT, data: 2n }])],
  ];
  for (const [name, plant] of faults) {
    const s = structuredClone(base);
    plant(s);
    assert(kvmRefusals(kvmStateOf(s)).length > 0, `not caught: ${name}`);
  }
});

// ---------------------------------------------------------------------------------------------
// KVM's state on the emulated CPU.

/** A vCPU state exactly as KVM's ioctls hand it over (every optional part present). */
function kvmSaved() {
  const regs = abi.kvmRegs.decode(abi.kvmRegs.encode({ ...abi.kvmRegs.zero(), rip: 0xfff0n }));
  return {
    index: 1,
    regs,
    sregs: abi.kvmSregs.zero(),
    msrs: [{ index: 0x277, data: 0x0007_0406_0007_0406n }] satisfies abi.KvmMsrEntry[],
    lapic: abi.kvmLapicState.zero().regs,
    mpState: abi.MP_STATE.RUNNABLE,
    xsave: new Uint8Array(abi.KVM_XSAVE_SIZE),
    xcrs: { ...abi.kvmXcrs.zero(), nr_xcrs: 1 },
    events: { ...abi.kvmVcpuEvents.zero(), flags: abi.VCPUEVENT_VALID.NMI_PENDING },
    debugregs: { ...abi.kvmDebugregs.zero(), dr6: 0xffff0ff0n, dr7: 0x400n },
    cpuid: [{ ...abi.kvmCpuidEntry2.zero(), function: 1, eax: 0x806f8 }],
  };
}

/** KVM's platform exactly as KVM_GET_IRQCHIP, KVM_GET_PIT2 and KVM_GET_CLOCK hand it over. */
function kvmSavedPlatform() {
  const chip = () => abi.kvmIrqchip.zero().chip;
  return {
    irqchip: { picMaster: chip(), picSlave: chip(), ioapic: chip() },
    pit: abi.kvmPitState2.zero(),
    clock: { ...abi.kvmClockData.zero(), clock: 123_456_789n, flags: abi.KVM_CLOCK_TSC_STABLE },
  };
}

// Type-level: these compile only while the emulated CPU's load path takes KVM's shapes as they are
// (the VMM thread's EmuVcpu.load, the Worker's start message and EmuCpu.load, the VM's
// loadPlatform, which the emulated VM implements from AccelVm).
const _toEmuVcpu: Parameters<EmuVcpu["load"]>[0] = kvmSaved();
const _toEmuWorker: EmuWorkerInit["state"] = kvmSaved();
const _toEmuCpu: Parameters<EmuCpu["load"]>[0] = kvmSaved();
const _toEmuVm: Parameters<AccelVm["loadPlatform"]>[0] = kvmSavedPlatform();

Deno.test("a state KVM saved is taken by the emulated vCPU before it starts, unchanged", () => {
  // A vCPU that never starts uses only its index (the rest is for its Worker).
  const vcpu = new EmuVcpu({ index: 1 } as ConstructorParameters<typeof EmuVcpu>[0]);
  const s: CpuState = kvmSaved();
  vcpu.load(s);
  assertEquals(vcpu.save(), s);
  assertEquals(cpuStateOf(throughKvm(kvmStateOf(s))), s);
});
