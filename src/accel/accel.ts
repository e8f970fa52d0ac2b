/**
 * The one interface the VMM asks of a CPU backend, as QEMU's accelerators and Cloud Hypervisor's
 * `hypervisor` crate: capabilities, a VM over guest RAM, dirty tracking, vCPUs whose run loop lives
 * in a Worker, interrupt lines, and state in the neutral form of `cpu_state.ts`. KVM and the
 * emulated CPU implement it; nothing above this layer names either.
 */
import type { CpuState, PlatformState } from "./cpu_state.ts";

/** Size of a guest page: the unit of memory regions, dirty tracking, paging and checkpoints. */
export const PAGE_SIZE = 4096;

/** The accelerators dcres has. */
export const ACCEL_KINDS = ["kvm", "emu"] as const;
/** An accelerator's name. */
export type AccelKind = typeof ACCEL_KINDS[number];
/** What a person may ask for: one of them, or `auto`. */
export type AccelChoice = AccelKind | "auto";

/** What an accelerator can do; the VMM asks these instead of sniffing the host. */
export interface Capabilities {
  /** Guest kernel-mode code runs at native speed (false under PVM and on the emulated CPU). */
  fastGuestKernel: boolean;
  /** It can boot the Linux guest (needs the in-kernel irqchip, PIT and a full CPU). */
  linuxGuest: boolean;
  /** Human-readable description for `vm ls`, `status` and benchmarks. */
  description: string;
}

/** Guest RAM as the accelerator sees it: a shared mapping of the memfd. */
export interface RamRegion {
  /** Host address of the mapping. */
  hostAddr: bigint;
  /** Bytes; guest-physical address 0 up to this. */
  size: number;
}

/** Where a vCPU's Worker runs and what it must be told. */
export interface WorkerSpec {
  /** Module URL of the Worker. */
  url: string;
  /** Backend part of the start message (structured-cloneable). */
  init: Record<string, unknown>;
}

/** One vCPU as the VMM thread drives it; the run loop itself is in the Worker `worker()` names. */
export interface AccelVcpu {
  /** vCPU index. */
  readonly index: number;
  /** The Worker that runs this vCPU and its start message. */
  worker(): WorkerSpec;
  /** Called with the Worker's `ready` payload (its thread id, native handles). */
  attach(ready: Record<string, unknown>): void;
  /** Makes a running vCPU leave guest code soon; safe from any state. */
  kick(): void;
  /** The vCPU's state; the vCPU must be parked (or not started). */
  save(): CpuState;
  /** Installs a state; the vCPU must not have started yet. */
  load(state: CpuState): void;
  /** Releases the vCPU (its Worker has been stopped). */
  close(): void;
}

/**
 * Copy-on-write done by the accelerator itself, before each guest store (the emulated CPU's write
 * hook), so no page fault is taken. The saver claims pages before writing them out; a page the
 * guest wrote first was copied aside and is saved from the copy.
 */
export interface AccelCow {
  /** Host address of the copies set aside: page g at `asideAddr + g * PAGE_SIZE`. */
  readonly asideAddr: bigint;
  /** Pages copied aside so far. */
  readonly copiedAside: number;
  /**
   * Takes `gfns` for saving: `kinds[i]` becomes 0 when the page is now the saver's to write from
   * guest memory (then `release` it), 1 when it was copied aside, 2 when there is nothing to save.
   */
  claim(gfns: Uint32Array, kinds: Uint8Array): void;
  /** The claimed pages are written out: the guest may change them now. */
  release(gfns: Uint32Array): void;
  /** Ends the save; once it returns no store waits or copies, and the copies are freed. */
  end(): void;
}

/** One VM's worth of accelerator: its memory view, platform devices and vCPUs. */
export interface AccelVm {
  /** The accelerator it belongs to. */
  readonly kind: AccelKind;
  /** Creates vCPU `index` in its reset state (CPUID and MSR list from the accelerator). */
  createVcpu(index: number): AccelVcpu;
  /** Drives an interrupt line of the platform's interrupt controller (ignored where absent). */
  setIrq(line: number, level: boolean): void;
  /** ORs the pages the guest wrote since the last call into `bitmap` (one bit per page), resets. */
  harvestDirty(bitmap: Uint8Array): void;
  /**
   * Starts a copy-on-write save of the pages set in `wanted` (a bit per page), with the vCPUs
   * paused; absent where the accelerator cannot (KVM: the caller write-protects with userfaultfd).
   */
  beginCow?(wanted: Uint8Array): AccelCow;
  /** Interrupt controllers, PIT and clock outside the vCPUs. */
  savePlatform(): PlatformState;
  /** Installs a saved platform state (parts this accelerator lacks are ignored). */
  loadPlatform(state: PlatformState): void;
  /** Releases the VM (every vCPU closed first). */
  close(): void;
}

/** A CPU backend. */
export interface Accelerator {
  /** Its name. */
  readonly kind: AccelKind;
  /** What it can do. */
  readonly capabilities: Capabilities;
  /** Creates a VM over guest RAM. */
  createVm(ram: RamRegion): AccelVm;
}

/** An accelerator cannot be used here; the message says why and what to do. */
export class AccelUnavailableError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "AccelUnavailableError";
  }
}

/** Parses `--accel` / `DCRES_ACCEL`. */
export function parseAccelChoice(value: string, what = "--accel"): AccelChoice {
  if (value === "auto" || (ACCEL_KINDS as readonly string[]).includes(value)) {
    return value as AccelChoice;
  }
  throw new AccelUnavailableError(
    `${what} must be auto, kvm or emu, got "${value}"`,
  );
}
