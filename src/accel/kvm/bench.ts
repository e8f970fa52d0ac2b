/**
 * KVM-only measurements for `deno task bench vmm`: the reference an exit through the Worker loop is
 * compared with, a bare KVM_RUN ioctl on a vCPU fd from this thread.
 */
import { IOCTL } from "../../ffi/kvm_abi.ts";
import * as libc from "../../ffi/libc.ts";
import type { AccelVcpu } from "../accel.ts";
import { KvmVcpu } from "./kvm_vcpu.ts";

/**
 * Microseconds per KVM_RUN round trip of `vcpu` (a KVM vCPU that has not started its Worker and
 * whose guest exits at once every time), over `n` runs after 1000 warm-up runs.
 */
export function bareKvmRunUs(vcpu: AccelVcpu, n: number): number {
  if (!(vcpu instanceof KvmVcpu)) {
    throw new Error("the bare KVM_RUN measurement needs a vCPU on the kvm accelerator");
  }
  const fd = vcpu.fd;
  for (let i = 0; i < 1000; i++) libc.ioctlRaw(fd, IOCTL.RUN, 0n);
  const t0 = performance.now();
  for (let i = 0; i < n; i++) libc.ioctlRaw(fd, IOCTL.RUN, 0n);
  return ((performance.now() - t0) * 1000) / n;
}
