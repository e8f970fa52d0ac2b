/**
 * One KVM vCPU as the VMM thread drives it: its fd and `kvm_run` mapping, CPUID with its APIC id,
 * state save and load in the order KVM needs, and the kick (immediate_exit plus SIGUSR2 at the
 * Worker's thread). The KVM_RUN loop itself is `vcpu_worker.ts`.
 */
import * as abi from "../../ffi/kvm_abi.ts";
import { type Kvm, VcpuFd, type VmFd } from "../../ffi/kvm.ts";
import * as libc from "../../ffi/libc.ts";
import { SyscallError } from "../../ffi/errors.ts";
import type { AccelVcpu, WorkerSpec } from "../accel.ts";
import type { CpuState } from "../cpu_state.ts";
import { cpuStateOf, kvmStateOf, sameCpuid } from "./kvm_state.ts";

/** What the KVM vCPU Worker is told (`VcpuInit.backend`). */
export interface KvmWorkerInit {
  /** vCPU fd. */
  fd: number;
  /** Host address of the vCPU's kvm_run mapping. */
  runAddr: bigint;
  /** Size of that mapping. */
  runSize: number;
}

/** What creating a KVM vCPU needs from its VM. */
export interface KvmVcpuArgs {
  /** The system fd (for the mmap size). */
  kvm: Kvm;
  /** The VM fd. */
  vm: VmFd;
  /** vCPU index (and APIC id). */
  index: number;
  /** CPUID to install. */
  cpuid: abi.KvmCpuidEntry2[];
  /** XSAVE buffer size (XSAVE2 capability, at least 4096). */
  xsaveSize: number;
  /** MSR indices to save. */
  msrIndices: number[];
}

let kickSignalInstalled = false;

/** Makes SIGUSR2 (the kick) harmless to this thread: with a listener it only interrupts KVM_RUN. */
function installKickSignal(): void {
  if (kickSignalInstalled) return;
  // SIGUSR1 would open V8's inspector; SIGUSR2 is free.
  Deno.addSignalListener("SIGUSR2", () => {});
  kickSignalInstalled = true;
}

/** A KVM vCPU. */
export class KvmVcpu implements AccelVcpu {
  /** vCPU index. */
  readonly index: number;
  readonly #fd: VcpuFd;
  readonly #runPtr: Deno.PointerObject;
  readonly #runSize: number;
  readonly #run: Uint8Array<ArrayBuffer>;
  readonly #xsaveSize: number;
  readonly #msrIndices: number[];
  #cpuid: abi.KvmCpuidEntry2[];
  #thread = 0n;

  constructor(args: KvmVcpuArgs) {
    this.index = args.index;
    this.#xsaveSize = args.xsaveSize;
    this.#msrIndices = args.msrIndices;
    this.#cpuid = args.cpuid;
    this.#fd = new VcpuFd(args.vm.createVcpu(args.index));
    try {
      this.#runSize = args.kvm.vcpuMmapSize();
      this.#runPtr = libc.mmap(
        this.#runSize,
        libc.MAP.PROT_READ | libc.MAP.PROT_WRITE,
        libc.MAP.SHARED,
        this.#fd.fd,
      );
    } catch (e) {
      libc.close(this.#fd.fd);
      throw e;
    }
    this.#run = libc.bytesAt(this.#runPtr, this.#runSize);
    this.#fd.setCpuid2(args.cpuid);
  }

  /** The vCPU fd (the KVM-only benchmark runs it bare). */
  get fd(): number {
    return this.#fd.fd;
  }

  /** The KVM_RUN loop and the fd and mapping it runs on. */
  worker(): WorkerSpec {
    const init: KvmWorkerInit = {
      fd: this.#fd.fd,
      runAddr: libc.ptrValue(this.#runPtr),
      runSize: this.#runSize,
    };
    return {
      url: new URL("./vcpu_worker.ts", import.meta.url).href,
      init: init as unknown as Record<string, unknown>,
    };
  }

  /** Takes the Worker's pthread id (`thread`), the target of kicks. */
  attach(ready: Record<string, unknown>): void {
    installKickSignal();
    const thread = ready.thread;
    if (typeof thread !== "bigint") {
      throw new Error(`vCPU ${this.index}: the KVM worker sent no thread id`);
    }
    this.#thread = thread;
  }

  /** immediate_exit covers the window before KVM_RUN; the signal covers a vCPU inside it. */
  kick(): void {
    Atomics.store(this.#run, abi.kvmRunHeader.offsets.immediate_exit, 1);
    if (this.#thread !== 0n) libc.pthreadKill(this.#thread, libc.SIG.USR2);
  }

  /** Every register file KVM holds for the vCPU, in the neutral form. */
  save(): CpuState {
    const f = this.#fd;
    return cpuStateOf({
      index: this.index,
      regs: f.getRegs(),
      sregs: f.getSregs(),
      xsave: f.getXsave(this.#xsaveSize),
      xcrs: f.getXcrs(),
      msrs: getMsrsTolerant(f, this.#msrIndices),
      lapic: f.getLapic(),
      events: f.getVcpuEvents(),
      mpState: f.getMpState(),
      debugregs: f.getDebugregs(),
      cpuid: this.#cpuid,
    });
  }

  /**
   * Installs `s` in the order KVM needs: CPUID first (it decides which XSAVE features and MSRs are
   * valid), sregs before LAPIC and MSRs, events last. Parts `s` lacks keep their reset values.
   */
  load(s: CpuState): void {
    const f = this.#fd;
    const k = kvmStateOf(s);
    if (k.cpuid && k.cpuid.length > 0 && !sameCpuid(k.cpuid, this.#cpuid)) {
      f.setCpuid2(k.cpuid);
      this.#cpuid = k.cpuid;
    }
    f.setMpState(k.mpState);
    f.setRegs(k.regs);
    f.setSregs(k.sregs);
    if (k.xsave) f.setXsave(k.xsave);
    if (k.xcrs) f.setXcrs(k.xcrs);
    if (k.debugregs) f.setDebugregs(k.debugregs);
    f.setLapic(k.lapic);
    f.setMsrs(k.msrs);
    if (k.events) f.setVcpuEvents(k.events);
  }

  /** Unmaps kvm_run and closes the fd (the Worker has stopped). */
  close(): void {
    libc.munmap(this.#runPtr, this.#runSize);
    libc.close(this.#fd.fd);
  }
}

/** KVM_GET_MSRS stops at the first MSR it cannot read; skip that one and carry on. */
function getMsrsTolerant(f: VcpuFd, indices: number[]): abi.KvmMsrEntry[] {
  const out: abi.KvmMsrEntry[] = [];
  let rest = indices;
  while (rest.length > 0) {
    let got: abi.KvmMsrEntry[];
    try {
      got = f.getMsrs(rest);
    } catch (e) {
      if (e instanceof SyscallError) got = [];
      else throw e;
    }
    out.push(...got);
    rest = rest.slice(got.length + 1);
  }
  return out;
}
