/**
 * Conversion between the neutral state of `cpu_state.ts` and KVM's structs. The neutral names are
 * KVM's, so a KVM struct read from the kernel is already neutral; the way back fills what the
 * neutral form may leave out (fields, array entries, bytes) from the struct's zero value, so a
 * state saved by another accelerator or an older dcres encodes into exactly the struct KVM wants.
 *
 * The round trip neutral -> KVM structs -> neutral (tests/accel_state_test.ts) returns the state
 * unchanged, except: fixed-size KVM arrays come back whole (`xcrs.xcrs` as 16 entries, those past
 * the neutral list zero); `xsave` comes back zero-padded to `KVM_XSAVE_SIZE`; a field missing from
 * a present part comes back as KVM's zero value for it, and a field KVM's struct lacks is dropped.
 * An optional part that is absent yields no struct: the vCPU keeps its reset value for it.
 */
import * as abi from "../../ffi/kvm_abi.ts";
import type { Codec } from "../../ffi/struct.ts";
import {
  type CpuidEntry,
  type CpuState,
  type DebugRegisters,
  LAPIC_PAGE_BYTES,
  type MsrEntry,
  type PlatformState,
  type Registers,
  type SpecialRegisters,
  type VcpuEvents,
  type XcrsState,
} from "../cpu_state.ts";

/** Bytes of one in-kernel irqchip union (`kvm_irqchip.chip`). */
const CHIP_BYTES = 512;

/**
 * `value` shaped like `zero`: every field of `zero` taken from `value` where present (recursively
 * for nested structs, entry by entry for fixed arrays), fields `zero` lacks dropped.
 */
export function conform<T>(zero: T, value: unknown): T {
  if (value === undefined || value === null) return zero;
  if (zero instanceof Uint8Array) return fitBytes(value as Uint8Array, zero.length) as T;
  if (Array.isArray(zero)) {
    const src = Array.isArray(value) ? value : [];
    return zero.map((z, i) => conform(z, src[i])) as T;
  }
  if (typeof zero === "object" && zero !== null) {
    const src = value as Record<string, unknown>;
    const out: Record<string, unknown> = {};
    for (const [k, z] of Object.entries(zero)) out[k] = conform(z, src[k]);
    return out as T;
  }
  if (typeof zero === "bigint" && typeof value === "number") return BigInt(value) as T;
  if (typeof zero === "number" && typeof value === "bigint") return Number(value) as T;
  return (typeof value === typeof zero ? value : zero) as T;
}

/** `bytes` cut or zero-padded to `length`. */
export function fitBytes(bytes: Uint8Array, length: number): Uint8Array {
  if (bytes.length === length) return bytes;
  const out = new Uint8Array(length);
  out.set(bytes.subarray(0, length));
  return out;
}

const as = <T>(codec: Codec<T>, value: unknown): T => conform(codec.zero(), value);

/** Neutral registers as `kvm_regs`. */
export function kvmRegsOf(r: Registers): abi.KvmRegs {
  return as(abi.kvmRegs, r);
}

/** Neutral special registers as `kvm_sregs`. */
export function kvmSregsOf(s: SpecialRegisters): abi.KvmSregs {
  return as(abi.kvmSregs, s);
}

/** Neutral XCRs as `kvm_xcrs` (entries beyond the neutral list are zero). */
export function kvmXcrsOf(x: XcrsState): abi.KvmXcrs {
  return as(abi.kvmXcrs, x);
}

/** Neutral events as `kvm_vcpu_events`. */
export function kvmEventsOf(e: VcpuEvents): abi.KvmVcpuEvents {
  return as(abi.kvmVcpuEvents, e);
}

/** Neutral debug registers as `kvm_debugregs`. */
export function kvmDebugregsOf(d: DebugRegisters): abi.KvmDebugregs {
  return as(abi.kvmDebugregs, d);
}

/** Neutral MSRs as `kvm_msr_entry`s. */
export function kvmMsrsOf(msrs: MsrEntry[]): abi.KvmMsrEntry[] {
  return msrs.map((m) => as(abi.kvmMsrEntry, m));
}

/** Neutral CPUID leaves as `kvm_cpuid_entry2`s. */
export function kvmCpuidOf(cpuid: CpuidEntry[]): abi.KvmCpuidEntry2[] {
  return cpuid.map((e) => as(abi.kvmCpuidEntry2, e));
}

/** The neutral LAPIC page as `kvm_lapic_state`. */
export function kvmLapicOf(lapic: Uint8Array): abi.KvmLapicState {
  return { regs: fitBytes(lapic, LAPIC_PAGE_BYTES) };
}

/** A neutral XSAVE area as the buffer `KVM_SET_XSAVE` takes (zero-padded to 4 KiB). */
export function kvmXsaveOf(xsave: Uint8Array): Uint8Array {
  return fitBytes(xsave, Math.max(xsave.length, abi.KVM_XSAVE_SIZE));
}

/** One vCPU's state in KVM's structs, as its `KVM_GET_*`/`KVM_SET_*` ioctls take them. */
export interface KvmCpuState {
  /** vCPU index. */
  index: number;
  /** `kvm_regs`. */
  regs: abi.KvmRegs;
  /** `kvm_sregs`. */
  sregs: abi.KvmSregs;
  /** `kvm_msrs` entries. */
  msrs: abi.KvmMsrEntry[];
  /** `kvm_lapic_state`. */
  lapic: abi.KvmLapicState;
  /** `kvm_mp_state.mp_state`. */
  mpState: number;
  /** `kvm_xsave` region; absent: not set, KVM keeps its own. */
  xsave?: Uint8Array;
  /** `kvm_xcrs`; absent: not set. */
  xcrs?: abi.KvmXcrs;
  /** `kvm_vcpu_events`; absent: not set. */
  events?: abi.KvmVcpuEvents;
  /** `kvm_debugregs`; absent: not set. */
  debugregs?: abi.KvmDebugregs;
  /** `kvm_cpuid2` entries; absent: not set. */
  cpuid?: abi.KvmCpuidEntry2[];
}

/** A neutral vCPU state as KVM's structs; optional parts it lacks stay absent. */
export function kvmStateOf(s: CpuState): KvmCpuState {
  return {
    index: s.index,
    regs: kvmRegsOf(s.regs),
    sregs: kvmSregsOf(s.sregs),
    msrs: kvmMsrsOf(s.msrs),
    lapic: kvmLapicOf(s.lapic),
    mpState: s.mpState,
    ...(s.xsave && { xsave: kvmXsaveOf(s.xsave) }),
    ...(s.xcrs && { xcrs: kvmXcrsOf(s.xcrs) }),
    ...(s.events && { events: kvmEventsOf(s.events) }),
    ...(s.debugregs && { debugregs: kvmDebugregsOf(s.debugregs) }),
    ...(s.cpuid && { cpuid: kvmCpuidOf(s.cpuid) }),
  };
}

/** KVM's structs as the neutral state (they are already in it; the LAPIC page is unwrapped). */
export function cpuStateOf(k: KvmCpuState): CpuState {
  const { lapic, ...rest } = k;
  return { ...rest, lapic: lapic.regs };
}

/** True when two CPUID tables hold the same leaves in the same order. */
export function sameCpuid(a: abi.KvmCpuidEntry2[], b: abi.KvmCpuidEntry2[]): boolean {
  const key = (e: abi.KvmCpuidEntry2) =>
    [e.function, e.index, e.flags, e.eax, e.ebx, e.ecx, e.edx].join(",");
  return a.length === b.length && a.every((e, i) => key(e) === key(b[i]));
}

/** KVM's in-kernel chips as they go into `PlatformState`. */
export interface KvmPlatform {
  /** PIC master, PIC slave and IOAPIC unions. */
  irqchip: { picMaster: Uint8Array; picSlave: Uint8Array; ioapic: Uint8Array };
  /** The PIT. */
  pit: abi.KvmPitState2;
  /** kvmclock. */
  clock: abi.KvmClockData;
}

/** KVM's chips as neutral platform state. */
export function platformOf(k: KvmPlatform): PlatformState {
  return { irqchip: k.irqchip, pit: k.pit, clock: k.clock };
}

/** A saved irqchip union, cut or padded to the 512 bytes `KVM_SET_IRQCHIP` takes. */
export function chipOf(bytes: Uint8Array): Uint8Array {
  return fitBytes(bytes, CHIP_BYTES);
}

/** A saved PIT as `kvm_pit_state2`. */
export function kvmPitOf(pit: Record<string, unknown>): abi.KvmPitState2 {
  return as(abi.kvmPitState2, pit);
}

/** A saved guest clock as `kvm_clock_data` for `KVM_SET_CLOCK` (no flags: just the time). */
export function kvmClockOf(clock: NonNullable<PlatformState["clock"]>): abi.KvmClockData {
  return { ...abi.kvmClockData.zero(), clock: clock.clock, flags: 0 };
}
