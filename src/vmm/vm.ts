/**
 * A virtual machine on one accelerator: guest RAM, the accelerator's VM (memory, interrupt
 * controllers, dirty tracking), vCPU Workers and port devices.
 */
import { getLogger } from "@logtape/logtape";
import type { AccelCow, Accelerator, AccelKind, AccelVm, Capabilities } from "../accel/accel.ts";
import type { CpuState, PlatformState } from "../accel/cpu_state.ts";
import { openAccelerator } from "../accel/select.ts";
import type { VcpuMessage } from "../accel/vcpu_control.ts";
import { GuestMemory, type GuestMemoryState } from "../memory/guest_memory.ts";
import { PioBus, type PioDevice } from "./devices/bus.ts";
import type { Persist } from "../codec/persist.ts";
import { Vcpu } from "./vcpu.ts";

const log = getLogger(["dcres", "vm"]);

/** Identity and shape of a VM. */
export interface VmConfig {
  /** VM name, unique per host. */
  name: string;
  /** Guest RAM in bytes. */
  memSize: number;
  /** Number of vCPUs. */
  vcpus: number;
}

/** Why a VM stopped running. */
export interface VmExit {
  /**
   * What ended it: the guest shut the machine down, reset it, or halted a vCPU that nothing can
   * wake (not a shutdown: the guest did not ask to end); a vCPU failed; or the VMM stopped it.
   */
  reason: "shutdown" | "reset" | "halted" | "error" | "stopped";
  /** Details for people. */
  detail: string;
}

/**
 * How the VM ends when a vCPU ends on its own, each way by its own name: the guest's shutdown, a
 * vCPU's failure, or (once every vCPU has) a halt nothing can wake.
 */
export function vcpuExit(m: Extract<VcpuMessage, { t: "shutdown" | "halted" | "error" }>): VmExit {
  return { reason: m.t, detail: `vCPU ${m.index}: ${m.reason}` };
}

/**
 * The whole machine state except RAM contents. `irqchip`, `pit` and `clock` are the accelerator's
 * `PlatformState`, kept at the top level where manifests before accelerators had them.
 */
export interface VmState {
  /** Shape and name. */
  config: VmConfig;
  /** The accelerator it ran on (manifests before 1.2 lack it: they ran on KVM). */
  accel: AccelKind;
  /** Guest memory (size; contents travel separately). */
  memory: GuestMemoryState;
  /** Every vCPU. */
  vcpus: CpuState[];
  /** Every port device's state by name. */
  devices: Record<string, unknown>;
  /** PIC and IOAPIC (KVM's in-kernel chips). */
  irqchip?: PlatformState["irqchip"];
  /** The 8254 PIT (KVM's in-kernel PIT). */
  pit?: PlatformState["pit"];
  /** The guest clock. */
  clock?: PlatformState["clock"];
}

/** What building or restoring a VM needs besides its config. */
export interface VmArgs {
  /** The accelerator to run on (default: `openAccelerator()`, i.e. `$DCRES_ACCEL` or auto). */
  accel?: Accelerator;
  /** Guest RAM to use (restore: memory holding the saved contents); created when absent. */
  memory?: GuestMemory;
  /** Builds the port devices; `saved` holds their states on restore. */
  devices: (ctx: DeviceContext, saved?: Record<string, unknown>) => PioDevice[];
}

/** What devices may do to their VM. */
export interface DeviceContext {
  /** Drives an interrupt line of the platform's interrupt controller. */
  setIrq(line: number, level: boolean): void;
  /** Asks the VM to stop (guest reset or power-off request). */
  requestExit(exit: VmExit): void;
  /** The VM's memory size. */
  memSize: number;
}

/** A running (or paused) VM in this process. */
export class Vm implements Persist<VmState> {
  /** Port devices. */
  readonly bus = new PioBus();
  /** Resolves when the VM stops, with the reason. */
  readonly exited: Promise<VmExit>;
  /** Configuration. */
  readonly config: VmConfig;
  /** Guest RAM. */
  readonly memory: GuestMemory;
  /** vCPUs in index order. */
  readonly vcpus: Vcpu[];
  readonly #accel: Accelerator;
  readonly #avm: AccelVm;
  readonly #closeHooks: Array<() => void | Promise<void>> = [];
  #resolveExit!: (e: VmExit) => void;
  #exit?: VmExit;
  /** vCPUs that halted with nothing to wake them. */
  readonly #halted = new Set<number>();
  #ownsMemory: boolean;
  /** The vCPU threads starting, once `start` was called: a stop meanwhile waits for them. */
  #starting?: Promise<void>;
  #pauses = 0;

  private constructor(
    config: VmConfig,
    accel: Accelerator,
    avm: AccelVm,
    memory: GuestMemory,
    vcpus: Vcpu[],
    ownsMemory: boolean,
  ) {
    this.config = config;
    this.#accel = accel;
    this.#avm = avm;
    this.memory = memory;
    this.vcpus = vcpus;
    this.#ownsMemory = ownsMemory;
    this.exited = new Promise((r) => (this.#resolveExit = r));
  }

  /** Creates a VM with fresh vCPUs in their reset state. */
  static create(config: VmConfig, args: VmArgs): Vm {
    const vm = Vm.#build(config, args, undefined);
    vm.#attachDevices(args, undefined);
    return vm;
  }

  /** Recreates a VM from saved state over memory that already holds the saved contents. */
  static restore(args: VmArgs, state: VmState): Vm {
    const vm = Vm.#build(state.config, args, state.vcpus);
    try {
      vm.#avm.loadPlatform({ irqchip: state.irqchip, pit: state.pit, clock: state.clock });
    } catch (e) {
      void vm.#finish({ reason: "error", detail: (e as Error).message });
      throw e;
    }
    vm.#attachDevices(args, state.devices);
    return vm;
  }

  static #build(config: VmConfig, args: VmArgs, vcpuStates?: CpuState[]): Vm {
    const accel = args.accel ?? openAccelerator();
    const memory = args.memory ?? GuestMemory.create(config.memSize, `dcres-${config.name}`);
    let avm: AccelVm | undefined;
    const vcpus: Vcpu[] = [];
    try {
      avm = accel.createVm({ hostAddr: memory.hostAddr, size: memory.size });
      for (let index = 0; index < config.vcpus; index++) {
        vcpus.push(
          vcpuStates ? Vcpu.restore(avm, index, vcpuStates[index]) : Vcpu.create(avm, index),
        );
      }
      return new Vm(config, accel, avm, memory, vcpus, !args.memory);
    } catch (e) {
      for (const v of vcpus) v.backend.close();
      avm?.close();
      if (!args.memory) memory.close();
      throw e;
    }
  }

  #attachDevices(args: VmArgs, saved?: Record<string, unknown>) {
    const ctx: DeviceContext = {
      setIrq: (line, level) => this.#avm.setIrq(line, level),
      requestExit: (e) => void this.#finish(e),
      memSize: this.config.memSize,
    };
    for (const d of args.devices(ctx, saved)) this.bus.add(d);
  }

  /** The accelerator this VM runs on. */
  get accelKind(): AccelKind {
    return this.#accel.kind;
  }

  /** What that accelerator can do. */
  get capabilities(): Capabilities {
    return this.#accel.capabilities;
  }

  /** Starts every vCPU's Worker and lets the vCPUs run. */
  async start(): Promise<void> {
    // A stop that came first (a signal while the machine was built) leaves nothing to start.
    if (this.#starting || this.#exit) return;
    const ports = this.bus.claimedPorts();
    this.#starting = Promise.all(
      this.vcpus.map((v) => v.start(ports, (m) => this.#onVcpuMessage(m))),
    ).then(() => {});
    await this.#starting;
    if (this.#exit) return;
    for (const v of this.vcpus) v.resume();
  }

  #onVcpuMessage(m: VcpuMessage) {
    switch (m.t) {
      case "out":
        this.bus.write(m.port, m.size, m.value);
        break;
      case "in":
        this.vcpus[m.index].answerIn(this.bus.read(m.port, m.size));
        break;
      case "halted":
        // One vCPU that halts for good (an offlined CPU's `cli; hlt`) leaves the others running.
        this.#halted.add(m.index);
        log.info("vCPU {index} halted for good: {reason}", { index: m.index, reason: m.reason });
        if (this.#halted.size === this.vcpus.length) void this.#finish(vcpuExit(m));
        break;
      case "shutdown":
      case "error":
        void this.#finish(vcpuExit(m));
        break;
    }
  }

  /**
   * Pauses every vCPU; resolves with the time it took in ms. Pauses nest (an operator's pause, a
   * checkpoint, a page-out batch): the vCPUs run again only when every pause has been resumed.
   */
  async pause(): Promise<number> {
    const t0 = performance.now();
    this.#pauses++;
    for (const v of this.vcpus) v.requestPause();
    await Promise.all(this.vcpus.map((v) => v.waitParked()));
    return performance.now() - t0;
  }

  /** Ends one pause; the vCPUs run when no other pause holds them. */
  resume(): void {
    if (this.#pauses > 0) this.#pauses--;
    if (this.#pauses > 0) return;
    for (const v of this.vcpus) v.resume();
  }

  /** True once the VM has stopped for good. */
  get isStopped(): boolean {
    return this.#exit !== undefined;
  }

  /** The full machine state; the VM must be paused. */
  save(): VmState {
    const platform = this.#avm.savePlatform();
    return {
      config: { ...this.config },
      accel: this.#accel.kind,
      memory: this.memory.save(),
      vcpus: this.vcpus.map((v) => v.save()),
      ...(platform.irqchip ? { irqchip: platform.irqchip } : {}),
      ...(platform.pit ? { pit: platform.pit } : {}),
      ...(platform.clock ? { clock: platform.clock } : {}),
      devices: this.bus.save(),
    };
  }

  /**
   * Pages written since the last call (one bit per 4 KiB page), then reset: the accelerator's
   * dirty log of guest writes ORed with the pages this VMM wrote itself (`markWritten`), which no
   * accelerator's log sees.
   */
  dirtyBitmap(): Uint8Array<ArrayBuffer> {
    const bitmap = new Uint8Array(Math.ceil(this.memory.pages / 64) * 8);
    this.#avm.harvestDirty(bitmap);
    this.memory.takeWritten(bitmap);
    return bitmap;
  }

  /** True when the accelerator copies pages aside itself (no userfaultfd needed for cow). */
  get hasCow(): boolean {
    return this.#avm.beginCow !== undefined;
  }

  /**
   * Starts a copy-on-write save done by the accelerator (the pages set in `wanted`; the vCPUs must
   * be paused), or undefined when it has none and userfaultfd must do it.
   */
  beginCow(wanted: Uint8Array): AccelCow | undefined {
    return this.#avm.beginCow?.(wanted);
  }

  /** Stops the vCPUs and releases the accelerator's VM (and the memory, unless supplied). */
  async stop(exit: VmExit = { reason: "stopped", detail: "stopped by request" }): Promise<void> {
    await this.#finish(exit);
  }

  async #finish(exit: VmExit): Promise<void> {
    if (this.#exit) return;
    this.#exit = exit;
    await this.#starting?.catch(() => {});
    await Promise.all(this.vcpus.map((v) => v.close()));
    for (const hook of this.#closeHooks) await hook();
    this.#avm.close();
    if (this.#ownsMemory) this.memory.close();
    this.#resolveExit(exit);
  }

  /**
   * Runs `hook` after the vCPUs stopped and before the accelerator's VM is released: a userfaultfd
   * pager must let go of guest memory there, or KVM's teardown waits forever on a fault nobody
   * serves.
   */
  onClose(hook: () => void | Promise<void>): void {
    this.#closeHooks.push(hook);
  }

  /** Stops the vCPUs and releases the accelerator's VM, but keeps the memory for a new VM. */
  async detachMemory(): Promise<GuestMemory> {
    this.#ownsMemory = false;
    await this.#finish({ reason: "stopped", detail: "state captured" });
    return this.memory;
  }
}
