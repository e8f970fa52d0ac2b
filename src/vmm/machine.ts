/**
 * A machine: a VM with the standard PC devices (COM1, i8042, CMOS) and one of the guests loaded.
 * Both `create` and `restore` go through here so a restored machine has exactly the same devices.
 */
import type { Accelerator } from "../accel/accel.ts";
import { MP_STATE } from "../accel/cpu_state.ts";
import { kvmUnavailableReason, openAccelerator } from "../accel/select.ts";
import {
  fmtMiB,
  type GuestMemory,
  GuestMemoryError,
  hostAvailableMemory,
} from "../memory/guest_memory.ts";
import { linuxRegs, linuxSregs, loadLinux, MIN_LINUX_MEMORY } from "./boot/linux.ts";
import { BootImageError } from "./boot/bzimage.ts";
import type { PioDevice } from "./devices/bus.ts";
import { Cmos, type CmosState } from "./devices/cmos.ts";
import { I8042, type I8042State } from "./devices/i8042.ts";
import { Serial16550, type SerialState } from "./devices/serial.ts";
import { bootMemstamp } from "./guests/memstamp/boot.ts";
import {
  MemstampControl,
  type MemstampOptions,
  resolveOptions,
} from "./guests/memstamp/memstamp.ts";
import { dataRegion } from "./guests/memstamp/layout.ts";
import { MemstampReportPort, type ReportPortState } from "./guests/memstamp/report_port.ts";
import { type DeviceContext, Vm, type VmState } from "./vm.ts";

import { isName, NameError } from "../codec/names.ts";
/** The guests dcres can run. */
export const GUESTS = ["memstamp", "linux"] as const;
/** A guest kind. */
export type GuestKind = typeof GUESTS[number];

/** What to run. */
export interface MachineSpec {
  /** VM name. */
  name: string;
  /** Guest kind. */
  guest: GuestKind;
  /** Guest RAM in bytes. */
  memSize: number;
  /** vCPUs. */
  vcpus: number;
  /** memstamp workload knobs (memSize and vcpus come from the spec). */
  memstamp?: Omit<MemstampOptions, "memSize" | "vcpus">;
  /** Linux boot inputs. */
  linux?: { kernel: string; initrd?: string; cmdline: string };
}

/** The whole saved machine: spec plus VM state. */
export interface MachineState {
  /** What was running. */
  spec: MachineSpec;
  /** Machine state except RAM contents. */
  vm: VmState;
}

/** Where the machine's console output goes and what a guest reset does. */
export interface MachineIo {
  /** Bytes the guest writes to COM1. */
  serialOut(bytes: Uint8Array): void;
}

/** A bad machine spec (size, guest, files); the message says what to change. */
export class MachineSpecError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "MachineSpecError";
  }
}

/** A VM with its devices and guest. */
export class Machine {
  private constructor(
    /** What runs. */
    readonly spec: MachineSpec,
    /** The VM. */
    readonly vm: Vm,
    /** COM1. */
    readonly serial: Serial16550,
  ) {}

  /**
   * Creates the VM on `accel` (default: `openAccelerator()`) and loads the guest; the VM is not
   * started.
   */
  static async create(spec: MachineSpec, io: MachineIo, accel?: Accelerator): Promise<Machine> {
    validate(spec);
    const linux = spec.guest === "linux" ? await readLinuxInputs(spec) : undefined;
    const on = accel ?? openAccelerator();
    checkGuestSupported(spec.guest, on);
    let serial!: Serial16550;
    const vm = Vm.create(
      { name: spec.name, memSize: spec.memSize, vcpus: spec.vcpus },
      {
        accel: on,
        devices: (ctx) => {
          const devs = standardDevices(ctx, io, undefined);
          serial = devs.serial;
          return [...devs.list, ...guestDevices(spec, ctx, undefined)];
        },
      },
    );
    try {
      if (spec.guest === "memstamp") {
        bootMemstamp(vm, { ...spec.memstamp, memSize: spec.memSize, vcpus: spec.vcpus });
      } else {
        bootLinux(vm, spec, linux!);
      }
    } catch (e) {
      await vm.stop();
      throw e;
    }
    return new Machine(spec, vm, serial);
  }

  /**
   * Recreates a saved machine over memory that holds its saved contents, on `args.accel` (default:
   * `openAccelerator()`), whichever accelerator saved it; not started.
   */
  static restore(
    args: { memory: GuestMemory; io: MachineIo; accel?: Accelerator },
    state: MachineState,
  ): Machine {
    const accel = args.accel ?? openAccelerator();
    checkGuestSupported(state.spec.guest, accel);
    let serial!: Serial16550;
    const vm = Vm.restore({
      accel,
      memory: args.memory,
      devices: (ctx, saved) => {
        const devs = standardDevices(ctx, args.io, saved);
        serial = devs.serial;
        return [...devs.list, ...guestDevices(state.spec, ctx, saved)];
      },
    }, state.vm);
    return new Machine(state.spec, vm, serial);
  }

  /** The memstamp controller, for memstamp guests. */
  get memstamp(): MemstampControl | undefined {
    return this.spec.guest === "memstamp" ? new MemstampControl(this.vm.memory) : undefined;
  }

  /** Saves the machine; the VM must be paused. */
  save(): MachineState {
    return { spec: structuredClone(this.spec), vm: this.vm.save() };
  }
}

/** Refuses a guest the accelerator cannot run, in one line naming the accelerator and the way out. */
export function checkGuestSupported(guest: GuestKind, accel: Accelerator): void {
  if (guest !== "linux" || accel.capabilities.linuxGuest) return;
  const what = accel.kind === "emu" ? "the emulated CPU" : accel.capabilities.description;
  const why = kvmUnavailableReason() ?? "run it with --accel kvm";
  throw new MachineSpecError(
    `the linux guest needs KVM; this host runs ${what} (--accel ${accel.kind}): ${why}`,
  );
}

function validate(spec: MachineSpec) {
  // The name becomes the control socket's and the log's file names: one grammar, no `..`, no `/`.
  if (!isName("vm", spec.name)) {
    throw new MachineSpecError(new NameError("VM name", spec.name, "vm").message);
  }
  if (!(GUESTS as readonly string[]).includes(spec.guest)) {
    throw new MachineSpecError(`unknown guest "${spec.guest}"; use one of: ${GUESTS.join(", ")}`);
  }
  if (!Number.isSafeInteger(spec.memSize) || spec.memSize <= 0) {
    throw new MachineSpecError(`--mem must be a positive size such as 256M or 1G`);
  }
  const avail = hostAvailableMemory();
  if (spec.memSize > avail) {
    throw new GuestMemoryError(
      `--mem ${fmtMiB(spec.memSize)} exceeds the host's available ${
        fmtMiB(avail)
      }; use a smaller --mem`,
    );
  }
  if (!Number.isInteger(spec.vcpus) || spec.vcpus < 1 || spec.vcpus > 32) {
    throw new MachineSpecError(`--vcpus must be between 1 and 32, got ${spec.vcpus}`);
  }
  if (spec.guest === "memstamp") {
    resolveOptions({ ...spec.memstamp, memSize: spec.memSize, vcpus: spec.vcpus });
  } else {
    if (spec.memSize < MIN_LINUX_MEMORY) {
      throw new MachineSpecError(
        `the linux guest needs --mem of at least ${MIN_LINUX_MEMORY >> 20}M`,
      );
    }
    if (spec.memSize > 3 * 1024 ** 3) {
      throw new MachineSpecError(`the linux guest supports --mem up to 3G on this VMM`);
    }
    if (!spec.linux?.kernel) {
      throw new MachineSpecError(
        `the linux guest needs --kernel FILE (e.g. /boot/vmlinuz-*-cloud-amd64)`,
      );
    }
  }
}

async function readFileFor(what: string, path: string): Promise<Uint8Array> {
  try {
    return await Deno.readFile(path);
  } catch (e) {
    const why = e instanceof Deno.errors.NotFound ? "no such file" : (e as Error).message;
    throw new MachineSpecError(`${what} ${path}: ${why}; pass an existing file`);
  }
}

async function readLinuxInputs(spec: MachineSpec) {
  const l = spec.linux!;
  return {
    kernel: await readFileFor("--kernel", l.kernel),
    initrd: l.initrd ? await readFileFor("--initrd", l.initrd) : undefined,
  };
}

function bootLinux(vm: Vm, spec: MachineSpec, files: { kernel: Uint8Array; initrd?: Uint8Array }) {
  const l = spec.linux!;
  let setup;
  try {
    setup = loadLinux(vm.memory.view(), {
      kernel: files.kernel,
      kernelPath: l.kernel,
      initrd: files.initrd,
      initrdPath: l.initrd,
      cmdline: l.cmdline,
      memSize: spec.memSize,
    });
  } catch (e) {
    if (e instanceof BootImageError) throw new MachineSpecError(e.message);
    throw e;
  }
  const bsp = vm.vcpus[0];
  const s = bsp.save();
  bsp.load({
    ...s,
    sregs: linuxSregs(s.sregs, setup),
    regs: linuxRegs(setup),
    mpState: MP_STATE.RUNNABLE,
  });
}

function standardDevices(ctx: DeviceContext, io: MachineIo, saved?: Record<string, unknown>) {
  const serialArgs = { setIrq: ctx.setIrq, output: (b: Uint8Array) => io.serialOut(b) };
  const i8042Args = {
    onReset: () => ctx.requestExit({ reason: "reset", detail: "guest requested a reset (i8042)" }),
  };
  const cmosArgs = { memSize: ctx.memSize, ramBelow4g: Math.min(ctx.memSize, 3 * 1024 ** 3) };
  const serial = saved?.com1
    ? Serial16550.restore(serialArgs, saved.com1 as SerialState)
    : new Serial16550(serialArgs);
  const i8042 = saved?.i8042
    ? I8042.restore(i8042Args, saved.i8042 as I8042State)
    : new I8042(i8042Args);
  const cmos = saved?.cmos ? Cmos.restore(cmosArgs, saved.cmos as CmosState) : new Cmos(cmosArgs);
  return { serial, list: [serial, i8042, cmos] as PioDevice[] };
}

function guestDevices(
  spec: MachineSpec,
  ctx: DeviceContext,
  saved?: Record<string, unknown>,
): PioDevice[] {
  if (spec.guest !== "memstamp") return [];
  const onFault = (vector: number) =>
    ctx.requestExit({
      reason: "error",
      detail: `memstamp took exception vector ${vector} in ring 0`,
    });
  const s = saved?.["memstamp-report"] as ReportPortState | undefined;
  return [s ? MemstampReportPort.restore({ onFault }, s) : new MemstampReportPort(onFault)];
}

/**
 * Why a machine of `spec` cannot have its memory split across hosts, or undefined when it can: the
 * guest must keep some pages on the main host (see `pinnedPages`), and only memstamp says which.
 */
export function splitRefusal(spec: MachineSpec): string | undefined {
  return spec.guest === "memstamp"
    ? undefined
    : `split VMs run memstamp guests for now; ${spec.name} runs ${spec.guest}`;
}

/**
 * How many pages from guest physical 0 a split of a machine of `spec` keeps on the main host: the
 * guest's code, tables and stacks, which its vCPUs touch on every entry and which no sub-host round
 * trip may delay.
 */
export function pinnedPages(spec: MachineSpec): number {
  return spec.guest === "memstamp" ? dataRegion(spec.memSize).baseGfn : 0;
}
