/**
 * The KVM accelerator: `/dev/kvm` (or `$DCRES_KVM_DEVICE`) opened once per process, its supported
 * CPUID and MSR list read once, and VMs created over guest RAM. Under PVM (software KVM, as on the
 * development machines) guest kernel-mode code runs emulated, which the capabilities say.
 */
import type * as abi from "../../ffi/kvm_abi.ts";
import { Kvm, KvmUnavailableError } from "../../ffi/kvm.ts";
import { Errno, SyscallError } from "../../ffi/errors.ts";
import * as libc from "../../ffi/libc.ts";
import {
  type Accelerator,
  AccelUnavailableError,
  type AccelVm,
  type Capabilities,
  type RamRegion,
} from "../accel.ts";
import { KvmVm } from "./kvm_vm.ts";

/** The kernel module whose presence means /dev/kvm is PVM. */
const PVM_MODULE = "/sys/module/kvm_pvm";

/** KVM through `/dev/kvm`. */
class KvmAccelerator implements Accelerator {
  /** Always `kvm`. */
  readonly kind = "kvm" as const;
  /** Linux guests; fast guest kernel code unless PVM. */
  readonly capabilities: Capabilities;
  readonly #kvm: Kvm;
  readonly #cpuid: abi.KvmCpuidEntry2[];
  readonly #msrIndices: number[];

  constructor(kvm: Kvm) {
    this.#kvm = kvm;
    this.#cpuid = kvm.supportedCpuid();
    this.#msrIndices = kvm.msrIndexList();
    const pvm = isPvm();
    this.capabilities = {
      fastGuestKernel: !pvm,
      linuxGuest: true,
      description: pvm
        ? "KVM (PVM: guest kernel-mode code runs emulated, about 1000x slower)"
        : "KVM",
    };
  }

  /** A KVM VM over `ram`. */
  createVm(ram: RamRegion): AccelVm {
    return new KvmVm({ kvm: this.#kvm, ram, cpuid: this.#cpuid, msrIndices: this.#msrIndices });
  }
}

/**
 * Opens KVM; throws `AccelUnavailableError` saying what to do when `/dev/kvm` is missing, not
 * permitted (run as root or join the kvm group) or not a KVM device.
 */
export function openKvmAccelerator(): Accelerator {
  let kvm: Kvm;
  try {
    kvm = Kvm.open();
  } catch (e) {
    if (e instanceof KvmUnavailableError) throw new AccelUnavailableError(e.message);
    throw e;
  }
  try {
    return new KvmAccelerator(kvm);
  } catch (e) {
    kvm.close();
    throw e;
  }
}

/**
 * Why KVM cannot be used here, in a few words, or undefined when `/dev/kvm` (or
 * `$DCRES_KVM_DEVICE`) opens. It opens the device with open(2) through FFI, as `Kvm.open` does:
 * Deno's own `Deno.openSync` wants `--allow-all` for anything under /dev, which `dcres vmm` and the
 * CLI do not run with.
 */
export function kvmUnavailableReason(): string | undefined {
  const path = Deno.env.get("DCRES_KVM_DEVICE") ?? "/dev/kvm";
  try {
    libc.close(libc.open(path, libc.O.RDWR));
    return undefined;
  } catch (e) {
    if (!(e instanceof SyscallError)) throw e;
    if (e.errno === Errno.ENOENT) return `${path} does not exist`;
    if (e.errno === Errno.EACCES || e.errno === Errno.EPERM) {
      return `no permission on ${path} (run as root or join the kvm group)`;
    }
    return `${path} does not open: ${e.message}`;
  }
}

/** True when `/dev/kvm` is PVM (guest kernel code emulated). */
function isPvm(): boolean {
  try {
    Deno.statSync(PVM_MODULE);
    return true;
  } catch {
    return false;
  }
}
