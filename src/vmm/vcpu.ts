/** A vCPU as the VMM thread sees it: its fd, its Worker, pause/resume/stop, and its saved state. */
import * as abi from "../ffi/kvm_abi.ts";
import { type Kvm, VcpuFd, type VmFd } from "../ffi/kvm.ts";
import * as libc from "../ffi/libc.ts";
import { SyscallError } from "../ffi/errors.ts";
import type { Persist } from "./persist.ts";
import {
  CONTROL_BYTES,
  RunState,
  SLOT,
  THREAD_SLOT,
  type VcpuInit,
  type VcpuMessage,
} from "./vcpu_control.ts";

/** Everything KVM holds for one vCPU, as named fields (extensible, not positional). */
export interface VcpuState {
  /** vCPU index. */
  index: number;
  /** General-purpose registers. */
  regs: abi.KvmRegs;
  /** Special registers. */
  sregs: abi.KvmSregs;
  /** XSAVE area (FPU, SSE, AVX...). */
  xsave: Uint8Array;
  /** Extended control registers. */
  xcrs: abi.KvmXcrs;
  /** Model-specific registers KVM saves (its index list). */
  msrs: abi.KvmMsrEntry[];
  /** Local APIC registers, including the timer's current count. */
  lapic: Uint8Array;
  /** Pending exceptions, interrupts and NMIs. */
  events: abi.KvmVcpuEvents;
  /** Run state (runnable, halted...). */
  mpState: number;
  /** Debug registers. */
  debugregs: abi.KvmDebugregs;
  /** CPUID the guest sees. */
  cpuid: abi.KvmCpuidEntry2[];
}

/** What building a vCPU needs from its VM. */
export interface VcpuArgs {
  /** The system fd (for the MSR list and mmap size). */
  kvm: Kvm;
  /** The VM fd. */
  vm: VmFd;
  /** vCPU index. */
  index: number;
  /** CPUID to install. */
  cpuid: abi.KvmCpuidEntry2[];
  /** XSAVE buffer size (XSAVE2 capability, at least 4096). */
  xsaveSize: number;
  /** MSR indices to save. */
  msrIndices: number[];
}

/** Called for every message a vCPU Worker posts. */
export type VcpuMessageHandler = (m: VcpuMessage) => void;

/** One vCPU and its Worker thread. */
export class Vcpu implements Persist<VcpuState> {
  /** The vCPU fd. */
  readonly fd: VcpuFd;
  private readonly runPtr: Deno.PointerObject;
  private readonly runSize: number;
  private readonly run: Uint8Array<ArrayBuffer>;
  private readonly control = new SharedArrayBuffer(CONTROL_BYTES);
  private readonly ctl = new Int32Array(this.control);
  private worker?: Worker;
  private thread = 0n;

  private constructor(private readonly args: VcpuArgs) {
    this.fd = new VcpuFd(args.vm.createVcpu(args.index));
    this.runSize = args.kvm.vcpuMmapSize();
    this.runPtr = libc.mmap(
      this.runSize,
      libc.MAP.PROT_READ | libc.MAP.PROT_WRITE,
      libc.MAP.SHARED,
      this.fd.fd,
    );
    this.run = libc.bytesAt(this.runPtr, this.runSize);
    this.fd.setCpuid2(args.cpuid);
    Atomics.store(this.ctl, SLOT.STATE, RunState.PAUSED);
  }

  /** Creates vCPU `args.index` with the given CPUID. */
  static create(args: VcpuArgs): Vcpu {
    return new Vcpu(args);
  }

  /** Creates the vCPU and installs a saved state (CPUID included). */
  static restore(args: VcpuArgs, state: VcpuState): Vcpu {
    const v = new Vcpu({ ...args, cpuid: state.cpuid });
    v.load(state);
    return v;
  }

  /** vCPU index. */
  get index(): number {
    return this.args.index;
  }

  /** Exits handled so far (wrapping 32-bit). */
  get exits(): number {
    return Atomics.load(this.ctl, SLOT.EXITS) >>> 0;
  }

  /** Current loop state (see `RunState`). */
  get state(): number {
    return Atomics.load(this.ctl, SLOT.STATE);
  }

  /** Starts the Worker, paused; resolves once its thread id is known. */
  async start(claimedPorts: number[], onMessage: VcpuMessageHandler): Promise<void> {
    const w = new Worker(new URL("./vcpu_worker.ts", import.meta.url).href, { type: "module" });
    this.worker = w;
    const ready = Promise.withResolvers<void>();
    w.onmessage = (e: MessageEvent<VcpuMessage>) => {
      if (e.data.t === "ready") {
        this.thread = BigInt.asUintN(64, new BigInt64Array(this.control)[THREAD_SLOT]);
        ready.resolve();
        return;
      }
      onMessage(e.data);
    };
    w.onerror = (e) => {
      e.preventDefault();
      ready.reject(new Error(`vCPU ${this.index} worker failed: ${e.message}`));
      onMessage({ t: "error", index: this.index, reason: e.message });
    };
    const init: VcpuInit = {
      index: this.index,
      fd: this.fd.fd,
      runAddr: libc.ptrValue(this.runPtr),
      runSize: this.runSize,
      control: this.control,
      claimedPorts,
    };
    w.postMessage(init);
    await ready.promise;
  }

  /** Lets the vCPU run. */
  resume(): void {
    const st = this.state;
    if (st === RunState.STOPPED || st === RunState.STOP_REQUESTED) return;
    Atomics.store(this.ctl, SLOT.STATE, RunState.RUNNING);
    Atomics.notify(this.ctl, SLOT.STATE);
  }

  /** Asks the vCPU to leave KVM_RUN and park; `waitParked` resolves when it has. */
  requestPause(): void {
    if (
      Atomics.compareExchange(this.ctl, SLOT.STATE, RunState.RUNNING, RunState.PAUSE_REQUESTED) ===
        RunState.RUNNING
    ) {
      this.kick();
    }
  }

  /** Asks the vCPU thread to exit. */
  requestStop(): void {
    const st = this.state;
    if (st === RunState.STOPPED) return;
    Atomics.store(this.ctl, SLOT.STATE, RunState.STOP_REQUESTED);
    Atomics.notify(this.ctl, SLOT.STATE);
    this.kick();
  }

  private kick(): void {
    // immediate_exit covers the window before KVM_RUN; the signal covers a vCPU inside it.
    Atomics.store(this.run, abi.kvmRunHeader.offsets.immediate_exit, 1);
    if (this.thread !== 0n) libc.pthreadKill(this.thread, libc.SIG.USR2);
  }

  /** Resolves once the vCPU is parked (paused or stopped), or rejects after `timeoutMs`. */
  async waitParked(timeoutMs = 5000): Promise<void> {
    const deadline = performance.now() + timeoutMs;
    for (;;) {
      const st = Atomics.load(this.ctl, SLOT.STATE);
      if (st === RunState.PAUSED || st === RunState.STOPPED) return;
      const left = deadline - performance.now();
      if (left <= 0) {
        throw new Error(`vCPU ${this.index} did not stop running within ${timeoutMs} ms`);
      }
      const w = Atomics.waitAsync(this.ctl, SLOT.STATE, st, Math.min(left, 50));
      if (w.async) await w.value;
      if (st === RunState.PAUSE_REQUESTED || st === RunState.STOP_REQUESTED) this.kick();
    }
  }

  /** Answers the Worker's pending port read. */
  answerIn(value: number): void {
    Atomics.store(this.ctl, SLOT.IN_VALUE, value | 0);
    Atomics.store(this.ctl, SLOT.IN_READY, 1);
    Atomics.notify(this.ctl, SLOT.IN_READY);
  }

  /** Saves the complete vCPU state; the vCPU must be parked. */
  save(): VcpuState {
    const f = this.fd;
    return {
      index: this.index,
      regs: f.getRegs(),
      sregs: f.getSregs(),
      xsave: f.getXsave(this.args.xsaveSize),
      xcrs: f.getXcrs(),
      msrs: getMsrsTolerant(f, this.args.msrIndices),
      lapic: f.getLapic().regs,
      events: f.getVcpuEvents(),
      mpState: f.getMpState(),
      debugregs: f.getDebugregs(),
      cpuid: this.args.cpuid,
    };
  }

  /** Installs a saved state, in the order KVM needs (sregs before LAPIC and MSRs, events last). */
  load(s: VcpuState): void {
    const f = this.fd;
    f.setMpState(s.mpState);
    f.setRegs(s.regs);
    f.setSregs(s.sregs);
    f.setXsave(s.xsave);
    f.setXcrs(s.xcrs);
    f.setDebugregs(s.debugregs);
    f.setLapic({ regs: s.lapic });
    f.setMsrs(s.msrs);
    f.setVcpuEvents(s.events);
  }

  /** Stops the Worker (if any) and releases the fd and mapping. */
  async close(): Promise<void> {
    if (this.worker) {
      this.requestStop();
      try {
        await this.waitParked(2000);
      } catch {
        // A stuck thread cannot be joined; terminating the Worker is all that is left.
      }
      this.worker.terminate();
      this.worker = undefined;
    }
    libc.munmap(this.runPtr, this.runSize);
    libc.close(this.fd.fd);
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
