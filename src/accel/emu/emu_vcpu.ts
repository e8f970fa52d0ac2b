/**
 * An emulated vCPU as the VMM thread sees it: the state it starts from, its Worker's start
 * message, kicks through a shared word the shim reads, and saves from the snapshot the Worker leaves at park.
 */
import type { AccelVcpu, WorkerSpec } from "../accel.ts";
import { type CpuState, LAPIC_PAGE_BYTES, MP_STATE, withLapicId } from "../cpu_state.ts";
import { unusableSegment } from "./descriptors.ts";
import { type EmuWorkerInit, readSnapshot, SNAPSHOT_BYTES } from "./snapshot.ts";

/** What an emulated vCPU shares with its VM. */
export interface EmuVcpuArgs {
  /** vCPU index. */
  index: number;
  /** Path of the shim library, for the Worker. */
  shimPath: string;
  /** Host address of guest RAM. */
  ramAddr: bigint;
  /** Bytes of guest RAM. */
  ramSize: number;
  /** Host address of the shim state the VM's vCPUs share. */
  vmAddr: bigint;
}

/** The architectural reset state (as after INIT), in the neutral form. */
export function resetState(index: number): CpuState {
  const z = 0n;
  return {
    index,
    regs: {
      rax: z,
      rbx: z,
      rcx: z,
      rdx: z,
      rsi: z,
      rdi: z,
      rsp: z,
      rbp: z,
      r8: z,
      r9: z,
      r10: z,
      r11: z,
      r12: z,
      r13: z,
      r14: z,
      r15: z,
      rip: 0xfff0n,
      rflags: 2n,
    },
    sregs: {
      cs: unusableSegment(),
      ds: unusableSegment(),
      es: unusableSegment(),
      fs: unusableSegment(),
      gs: unusableSegment(),
      ss: unusableSegment(),
      tr: unusableSegment(),
      ldt: unusableSegment(),
      gdt: { base: z, limit: 0xffff },
      idt: { base: z, limit: 0xffff },
      cr0: 0x60000010n,
      cr2: z,
      cr3: z,
      cr4: z,
      cr8: z,
      efer: z,
      apic_base: 0xfee00800n | (index === 0 ? 0x100n : 0n),
      interrupt_bitmap: [z, z, z, z],
    },
    msrs: [],
    lapic: withLapicId(new Uint8Array(LAPIC_PAGE_BYTES), index),
    mpState: MP_STATE.RUNNABLE,
  };
}

/** One emulated vCPU. */
export class EmuVcpu implements AccelVcpu {
  #a: EmuVcpuArgs;
  #state: CpuState;
  #snapshot = new SharedArrayBuffer(SNAPSHOT_BYTES);
  #kick = new SharedArrayBuffer(4);
  #started = false;

  constructor(a: EmuVcpuArgs) {
    this.#a = a;
    this.#state = resetState(a.index);
  }

  /** vCPU index. */
  get index(): number {
    return this.#a.index;
  }

  /** The emulated vCPU's Worker and its start message. */
  worker(): WorkerSpec {
    this.#started = true;
    const init: EmuWorkerInit = {
      shimPath: this.#a.shimPath,
      ramAddr: this.#a.ramAddr,
      ramSize: this.#a.ramSize,
      vmAddr: this.#a.vmAddr,
      kick: this.#kick,
      snapshot: this.#snapshot,
      state: { ...this.#state, index: this.#a.index },
    };
    return {
      url: new URL("./vcpu_worker.ts", import.meta.url).href,
      init: init as unknown as Record<string, unknown>,
    };
  }

  /** The emulated vCPU's Worker reports nothing this side needs. */
  attach(_ready: Record<string, unknown>): void {}

  /** The Worker stops at its next block; a kick before it runs is covered by the run state. */
  kick(): void {
    Atomics.store(new Int32Array(this.#kick), 0, 1);
  }

  /** The state: the one to start from, or the one the parked Worker left. */
  save(): CpuState {
    const s = this.#started ? readSnapshot(this.#snapshot) : structuredClone(this.#state);
    return { ...s, index: this.#a.index };
  }

  /** Sets the state to start from. */
  load(state: CpuState): void {
    if (this.#started) {
      throw new Error(`vCPU ${this.index} is running; load its state before start`);
    }
    this.#state = structuredClone(state);
  }

  /** Nothing to release on this thread: the Worker frees its engine before it reports STOPPED. */
  close(): void {}
}
