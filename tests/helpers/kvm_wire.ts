/** KVM's structs through their ioctl buffers, as KVM_SET_* takes and KVM_GET_* returns them. */
import { assertEquals } from "./assert.ts";
import * as abi from "../../src/ffi/kvm_abi.ts";
import type { StructCodec } from "../../src/ffi/struct.ts";
import type { KvmCpuState } from "../../src/accel/kvm/kvm_state.ts";

/** `value` encoded and decoded with `codec`. */
export function wire<T>(codec: StructCodec<T>, value: T): T {
  const buf = codec.encode(value);
  assertEquals(buf.length, codec.size);
  return codec.decode(buf);
}

/** A variable-length list in its ioctl buffer (`kvm_msrs`, `kvm_cpuid2`): count, then entries. */
export function wireList<H, E>(
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
export function throughKvm(k: KvmCpuState): KvmCpuState {
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
