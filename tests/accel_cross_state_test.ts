/**
 * The two accelerators' state shapes against each other, without /dev/kvm: a state as the emulated
 * CPU saves it for memstamp converts to sregs, regs and MSRs that KVM accepts (its KVM_SET_SREGS
 * checks and the VMX guest-state checks of the first KVM_RUN, written out below), and a state as
 * KVM saves it, with its platform, is what the emulated CPU's load path takes (checked by the type
 * checker).
 */
import { assert, assertEquals } from "./helpers/assert.ts";
import { throughKvm } from "./helpers/kvm_wire.ts";
import { emuSavedMemstamp, GDT_LIMIT, MSR } from "./helpers/emu_state.ts";
import * as abi from "../src/ffi/kvm_abi.ts";
import {
  type CpuState,
  LAPIC_PAGE_BYTES,
  MP_STATE,
  type Segment,
  type SpecialRegisters,
} from "../src/accel/cpu_state.ts";
import { cpuStateOf, type KvmCpuState, kvmStateOf } from "../src/accel/kvm/kvm_state.ts";
import type { AccelVm } from "../src/accel/accel.ts";
import { segmentFlags, segmentFromFlags, segmentFromGdt } from "../src/accel/emu/descriptors.ts";
import type { EmuCpu } from "../src/accel/emu/emu_cpu.ts";
import { EmuVcpu } from "../src/accel/emu/emu_vcpu.ts";
import type { EmuWorkerInit } from "../src/accel/emu/snapshot.ts";
import { LAYOUT, writeGdt } from "../src/vmm/guests/memstamp/layout.ts";
import { initialSregs } from "../src/vmm/guests/memstamp/memstamp.ts";

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
