/**
 * The emulated CPU (`--accel emu`): Debian's libunicorn2 through Deno FFI with the C shim for the
 * hot hooks, for hosts without /dev/kvm. Guest code runs emulated; everything above the CPU (memory,
 * devices, dirty tracking, checkpoints, paging) is the same code as on KVM. No PIC, IOAPIC or PIT:
 * guests get the LAPIC timer and port I/O, which is what memstamp uses.
 */
import { type EmuShim, loadEmuShim } from "../../ffi/emu_shim.ts";
import * as libc from "../../ffi/libc.ts";
import { ucVersion, UnicornMissingError } from "../../ffi/unicorn.ts";
import {
  type AccelCow,
  type Accelerator,
  AccelUnavailableError,
  type AccelVcpu,
  type AccelVm,
  type RamRegion,
} from "../accel.ts";
import type { PlatformState } from "../cpu_state.ts";
import { EmuVcpu } from "./emu_vcpu.ts";
import { ensureEmuShim } from "./shim_build.ts";
import { PAGE_SIZE } from "../accel.ts";

/** The write hook's copy-on-write over one VM. */
class EmuCow implements AccelCow {
  #shim: EmuShim;
  #vm: Deno.PointerObject;
  /** Host address of the copies. */
  readonly asideAddr: bigint;

  constructor(shim: EmuShim, vm: Deno.PointerObject, aside: Deno.PointerObject) {
    this.#shim = shim;
    this.#vm = vm;
    this.asideAddr = libc.ptrValue(aside);
  }

  get copiedAside(): number {
    return Number(this.#shim.dcres_emu_cow_copied(this.#vm));
  }

  claim(gfns: Uint32Array, kinds: Uint8Array): void {
    this.#shim.dcres_emu_cow_claim(
      this.#vm,
      gfns as Uint32Array<ArrayBuffer>,
      BigInt(gfns.length),
      kinds as Uint8Array<ArrayBuffer>,
    );
  }

  release(gfns: Uint32Array): void {
    this.#shim.dcres_emu_cow_release(
      this.#vm,
      gfns as Uint32Array<ArrayBuffer>,
      BigInt(gfns.length),
    );
  }

  end(): void {
    this.#shim.dcres_emu_cow_end(this.#vm);
  }
}

/** A VM on the emulated CPU: guest RAM, the shim state its vCPUs share, its vCPUs. */
class EmuVm implements AccelVm {
  readonly kind = "emu";
  #shim: EmuShim;
  #shimPath: string;
  #ram: RamRegion;
  #pages: number;
  #vm: Deno.PointerObject;

  constructor(shim: EmuShim, shimPath: string, ram: RamRegion) {
    this.#shim = shim;
    this.#shimPath = shimPath;
    this.#ram = ram;
    this.#pages = Math.ceil(ram.size / PAGE_SIZE);
    const vm = shim.dcres_emu_vm_alloc(libc.ptrOf(ram.hostAddr), BigInt(this.#pages));
    if (!vm) throw new Error("out of memory for the emulated CPU's dirty-page bytes");
    this.#vm = vm;
  }

  createVcpu(index: number): AccelVcpu {
    return new EmuVcpu({
      index,
      shimPath: this.#shimPath,
      ramAddr: this.#ram.hostAddr,
      ramSize: this.#ram.size,
      vmAddr: libc.ptrValue(this.#vm),
    });
  }

  /** The emulated platform has no PIC or IOAPIC: device interrupt lines go nowhere. */
  setIrq(_line: number, _level: boolean): void {}

  harvestDirty(bitmap: Uint8Array): void {
    this.#shim.dcres_emu_dirty_harvest(this.#vm, bitmap as Uint8Array<ArrayBuffer>);
  }

  beginCow(wanted: Uint8Array): AccelCow {
    const aside = this.#shim.dcres_emu_cow_begin(this.#vm, wanted as Uint8Array<ArrayBuffer>);
    if (!aside) throw new Error("the emulated CPU could not start copy-on-write (out of memory?)");
    return new EmuCow(this.#shim, this.#vm, aside);
  }

  /** No in-kernel chips and a clock that follows the host: nothing beyond the vCPUs. */
  savePlatform(): PlatformState {
    return {};
  }

  /** Chips saved by KVM have no counterpart here; memstamp does not use them. */
  loadPlatform(_state: PlatformState): void {}

  close(): void {
    this.#shim.dcres_emu_vm_free(this.#vm);
  }
}

/** Opens the emulated CPU: loads libunicorn, builds (once) and loads the shim. */
export function openEmuAccelerator(): Accelerator {
  let version: [number, number];
  try {
    version = ucVersion();
  } catch (e) {
    if (e instanceof UnicornMissingError) throw new AccelUnavailableError(e.message);
    throw e;
  }
  const shimPath = ensureEmuShim();
  const shim = loadEmuShim(shimPath);
  return {
    kind: "emu",
    capabilities: {
      fastGuestKernel: false,
      linuxGuest: false,
      description: `emulated CPU (Unicorn ${version[0]}.${version[1]}, QEMU TCG)`,
    },
    createVm: (ram) => new EmuVm(shim, shimPath, ram),
  };
}
