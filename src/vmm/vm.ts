/** A KVM virtual machine: memory slots, in-kernel irqchip and PIT, vCPU Workers, port devices. */
import * as abi from "../ffi/kvm_abi.ts";
import { Kvm, type VmFd } from "../ffi/kvm.ts";
import { GuestMemory, type GuestMemoryState } from "../memory/guest_memory.ts";
import { PioBus, type PioDevice } from "./devices/bus.ts";
import type { Persist } from "./persist.ts";
import { Vcpu, type VcpuArgs, type VcpuState } from "./vcpu.ts";
import type { VcpuMessage } from "./vcpu_control.ts";

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
  /** What ended it. */
  reason: "shutdown" | "reset" | "error" | "stopped";
  /** Details for people. */
  detail: string;
}

/** In-kernel interrupt controllers, as KVM's raw chip unions. */
export interface IrqchipState {
  /** Master 8259. */
  picMaster: Uint8Array;
  /** Slave 8259. */
  picSlave: Uint8Array;
  /** I/O APIC. */
  ioapic: Uint8Array;
}

/** The whole machine state except RAM contents. */
export interface VmState {
  /** Shape and name. */
  config: VmConfig;
  /** Guest memory (size; contents travel separately). */
  memory: GuestMemoryState;
  /** Every vCPU. */
  vcpus: VcpuState[];
  /** PIC and IOAPIC. */
  irqchip: IrqchipState;
  /** The 8254 PIT. */
  pit: abi.KvmPitState2;
  /** kvmclock. */
  clock: abi.KvmClockData;
  /** Every port device's state by name. */
  devices: Record<string, unknown>;
}

/** What building or restoring a VM needs besides its config. */
export interface VmArgs {
  /** Guest RAM to use (restore: memory holding the saved contents); created when absent. */
  memory?: GuestMemory;
  /** Builds the port devices; `saved` holds their states on restore. */
  devices: (ctx: DeviceContext, saved?: Record<string, unknown>) => PioDevice[];
}

/** What devices may do to their VM. */
export interface DeviceContext {
  /** Drives an interrupt line of the in-kernel PIC/IOAPIC. */
  setIrq(line: number, level: boolean): void;
  /** Asks the VM to stop (guest reset or power-off request). */
  requestExit(exit: VmExit): void;
  /** The VM's memory size. */
  memSize: number;
}

const TSS_ADDR = 0xfffbd000;
const IDENTITY_MAP_ADDR = 0xfffbc000n;
const SLOT_RAM = 0;
let signalInstalled = false;

/** A running (or paused) VM in this process. */
export class Vm implements Persist<VmState> {
  /** Port devices. */
  readonly bus = new PioBus();
  /** Resolves when the VM stops, with the reason. */
  readonly exited: Promise<VmExit>;
  private resolveExit!: (e: VmExit) => void;
  private exit?: VmExit;
  private ownsMemory: boolean;
  private started = false;

  private constructor(
    /** Configuration. */
    readonly config: VmConfig,
    private readonly kvm: Kvm,
    /** The VM fd. */
    readonly vmFd: VmFd,
    /** Guest RAM. */
    readonly memory: GuestMemory,
    /** vCPUs in index order. */
    readonly vcpus: Vcpu[],
    ownsMemory: boolean,
  ) {
    this.ownsMemory = ownsMemory;
    this.exited = new Promise((r) => (this.resolveExit = r));
  }

  /** Creates a VM with fresh vCPUs in their reset state. */
  static create(config: VmConfig, args: VmArgs): Vm {
    const vm = Vm.build(config, args, undefined);
    vm.attachDevices(args, undefined);
    return vm;
  }

  /** Recreates a VM from saved state over memory that already holds the saved contents. */
  static restore(args: VmArgs, state: VmState): Vm {
    const vm = Vm.build(state.config, args, state.vcpus);
    vm.vmFd.setIrqchip(abi.IRQCHIP.PIC_MASTER, state.irqchip.picMaster);
    vm.vmFd.setIrqchip(abi.IRQCHIP.PIC_SLAVE, state.irqchip.picSlave);
    vm.vmFd.setIrqchip(abi.IRQCHIP.IOAPIC, state.irqchip.ioapic);
    vm.vmFd.setPit2(state.pit);
    vm.vmFd.setClock({ ...state.clock, flags: 0 });
    vm.attachDevices(args, state.devices);
    return vm;
  }

  private static build(config: VmConfig, args: VmArgs, vcpuStates?: VcpuState[]): Vm {
    const kvm = Kvm.open();
    let vmFd: VmFd | undefined;
    const memory = args.memory ?? GuestMemory.create(config.memSize, `dcres-${config.name}`);
    try {
      vmFd = kvm.createVm();
      vmFd.setTssAddr(TSS_ADDR);
      vmFd.setIdentityMapAddr(IDENTITY_MAP_ADDR);
      vmFd.createIrqchip();
      vmFd.createPit2();
      vmFd.setUserMemoryRegion({
        slot: SLOT_RAM,
        flags: abi.MEM.LOG_DIRTY_PAGES,
        guest_phys_addr: 0n,
        memory_size: BigInt(memory.size),
        userspace_addr: memory.hostAddr,
      });
      const base: Omit<VcpuArgs, "index" | "cpuid"> = {
        kvm,
        vm: vmFd,
        xsaveSize: Math.max(vmFd.checkExtension(abi.CAP.XSAVE2), abi.KVM_XSAVE_SIZE),
        msrIndices: kvm.msrIndexList(),
      };
      const cpuid = kvm.supportedCpuid();
      const vcpus = Array.from(
        { length: config.vcpus },
        (_, index) =>
          vcpuStates
            ? Vcpu.restore({ ...base, index, cpuid: [] }, vcpuStates[index])
            : Vcpu.create({ ...base, index, cpuid: cpuidFor(cpuid, index) }),
      );
      return new Vm(config, kvm, vmFd, memory, vcpus, !args.memory);
    } catch (e) {
      vmFd?.close();
      kvm.close();
      if (!args.memory) memory.close();
      throw e;
    }
  }

  private attachDevices(args: VmArgs, saved?: Record<string, unknown>) {
    const ctx: DeviceContext = {
      setIrq: (line, level) => this.vmFd.irqLine(line, level ? 1 : 0),
      requestExit: (e) => void this.finish(e),
      memSize: this.config.memSize,
    };
    for (const d of args.devices(ctx, saved)) this.bus.add(d);
  }

  /** Starts every vCPU's Worker and lets the vCPUs run. */
  async start(): Promise<void> {
    if (this.started) return;
    this.started = true;
    if (!signalInstalled) {
      // Kicks are SIGUSR2 (SIGUSR1 would open V8's inspector) at a vCPU thread; with a listener installed they only interrupt KVM_RUN.
      Deno.addSignalListener("SIGUSR2", () => {});
      signalInstalled = true;
    }
    const ports = this.bus.claimedPorts();
    await Promise.all(this.vcpus.map((v) => v.start(ports, (m) => this.onVcpuMessage(m))));
    for (const v of this.vcpus) v.resume();
  }

  private onVcpuMessage(m: VcpuMessage) {
    switch (m.t) {
      case "out":
        this.bus.write(m.port, m.size, m.value);
        break;
      case "in":
        this.vcpus[m.index].answerIn(this.bus.read(m.port, m.size));
        break;
      case "shutdown":
        void this.finish({ reason: "shutdown", detail: `vCPU ${m.index}: ${m.reason}` });
        break;
      case "error":
        void this.finish({ reason: "error", detail: `vCPU ${m.index}: ${m.reason}` });
        break;
    }
  }

  /**
   * Pauses every vCPU; resolves with the time it took in ms. Pauses nest (an operator's pause, a
   * checkpoint, a page-out batch): the vCPUs run again only when every pause has been resumed.
   */
  async pause(): Promise<number> {
    const t0 = performance.now();
    this.pauses++;
    for (const v of this.vcpus) v.requestPause();
    await Promise.all(this.vcpus.map((v) => v.waitParked()));
    return performance.now() - t0;
  }

  /** Ends one pause; the vCPUs run when no other pause holds them. */
  resume(): void {
    if (this.pauses > 0) this.pauses--;
    if (this.pauses > 0) return;
    for (const v of this.vcpus) v.resume();
  }

  private pauses = 0;

  /** True once the VM has stopped for good. */
  get isStopped(): boolean {
    return this.exit !== undefined;
  }

  /** The full machine state; the VM must be paused. */
  save(): VmState {
    const chip = (id: number) => this.vmFd.getIrqchip(id);
    return {
      config: { ...this.config },
      memory: this.memory.save(),
      vcpus: this.vcpus.map((v) => v.save()),
      irqchip: {
        picMaster: chip(abi.IRQCHIP.PIC_MASTER),
        picSlave: chip(abi.IRQCHIP.PIC_SLAVE),
        ioapic: chip(abi.IRQCHIP.IOAPIC),
      },
      pit: this.vmFd.getPit2(),
      clock: this.vmFd.getClock(),
      devices: this.bus.save(),
    };
  }

  /** KVM's dirty bitmap of guest RAM since the last call (one bit per 4 KiB page). */
  dirtyBitmap(): Uint8Array<ArrayBuffer> {
    const bitmap = new Uint8Array(Math.ceil(this.memory.pages / 64) * 8);
    this.vmFd.getDirtyLog(SLOT_RAM, bitmap);
    return bitmap;
  }

  /** Stops the vCPUs and releases KVM resources (and the memory, unless the caller supplied it). */
  async stop(exit: VmExit = { reason: "stopped", detail: "stopped by request" }): Promise<void> {
    await this.finish(exit);
  }

  private async finish(exit: VmExit): Promise<void> {
    if (this.exit) return;
    this.exit = exit;
    await Promise.all(this.vcpus.map((v) => v.close()));
    for (const hook of this.closeHooks) await hook();
    this.vmFd.close();
    this.kvm.close();
    if (this.ownsMemory) this.memory.close();
    this.resolveExit(exit);
  }

  private readonly closeHooks: Array<() => void | Promise<void>> = [];

  /**
   * Runs `hook` after the vCPUs stopped and before KVM is released: a userfaultfd pager must let go
   * of guest memory there, or KVM's teardown waits forever on a fault nobody serves.
   */
  onClose(hook: () => void | Promise<void>): void {
    this.closeHooks.push(hook);
  }

  /** Stops the vCPUs and releases KVM, but keeps the memory for a restore into a new VM. */
  async detachMemory(): Promise<GuestMemory> {
    this.ownsMemory = false;
    await this.finish({ reason: "stopped", detail: "state captured" });
    return this.memory;
  }
}

/** Supported CPUID with this vCPU's APIC id filled in. */
function cpuidFor(supported: abi.KvmCpuidEntry2[], index: number): abi.KvmCpuidEntry2[] {
  return supported.map((e) => {
    if (e.function === 1) return { ...e, ebx: (e.ebx & 0x00ffffff) | (index << 24) };
    if (e.function === 0xb || e.function === 0x1f) return { ...e, edx: index };
    return e;
  });
}
