/**
 * Conversion between the neutral state of `cpu_state.ts` and KVM's structs. The neutral names are
 * KVM's, so a KVM struct read from the kernel is already neutral; the way back fills what the
 * neutral form may leave out (fields, array entries, bytes) from the struct's zero value, so a
 * state saved by another accelerator or an older dcres encodes into exactly the struct KVM wants.
 */
import * as abi from "../../ffi/kvm_abi.ts";
import type { Codec } from "../../ffi/struct.ts";
import {
  type CpuidEntry,
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
  return { irqchip: k.irqchip, pit: k.pit as unknown as Record<string, unknown>, clock: k.clock };
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
