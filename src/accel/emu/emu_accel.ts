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
  type Accelerator,
  AccelUnavailableError,
  type AccelVcpu,
  type AccelVm,
  type RamRegion,
} from "../accel.ts";
import type { PlatformState } from "../cpu_state.ts";
import { EmuVcpu } from "./emu_vcpu.ts";
import { ensureEmuShim } from "./shim_build.ts";

/** A VM on the emulated CPU: guest RAM, the dirty-page bytes its vCPUs share, its vCPUs. */
class EmuVm implements AccelVm {
  readonly kind = "emu";
  #shim: EmuShim;
  #shimPath: string;
  #ram: RamRegion;
  #pages: number;
  #dirty: Deno.PointerObject;

  constructor(shim: EmuShim, shimPath: string, ram: RamRegion) {
    this.#shim = shim;
    this.#shimPath = shimPath;
    this.#ram = ram;
    this.#pages = Math.ceil(ram.size / 4096);
    const dirty = shim.dcres_emu_dirty_alloc(BigInt(this.#pages));
    if (!dirty) throw new Error("out of memory for the emulated CPU's dirty-page bytes");
    this.#dirty = dirty;
  }

  createVcpu(index: number): AccelVcpu {
    return new EmuVcpu({
      index,
      shimPath: this.#shimPath,
      ramAddr: this.#ram.hostAddr,
      ramSize: this.#ram.size,
      dirtyAddr: libc.ptrValue(this.#dirty),
    });
  }

  /** The emulated platform has no PIC or IOAPIC: device interrupt lines go nowhere. */
  setIrq(_line: number, _level: boolean): void {}

  harvestDirty(bitmap: Uint8Array): void {
    this.#shim.dcres_emu_dirty_harvest(
      this.#dirty,
      bitmap as Uint8Array<ArrayBuffer>,
      BigInt(this.#pages),
    );
  }

  /** No in-kernel chips and a clock that follows the host: nothing beyond the vCPUs. */
  savePlatform(): PlatformState {
    return {};
  }

  /** Chips saved by KVM have no counterpart here; memstamp does not use them. */
  loadPlatform(_state: PlatformState): void {}

  close(): void {
    this.#shim.dcres_emu_dirty_free(this.#dirty);
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
