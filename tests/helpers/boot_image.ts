/**
 * Synthetic kernel images and guest-memory readers shared by the boot tests (boot_linux_*_test.ts,
 * boot_vmlinux_*_test.ts).
 */
import {
  BOOT_PARAMS_SIZE,
  LOADFLAGS,
  SETUP_HEADER,
  writeField,
  writeField64,
  XLOADFLAGS,
} from "../../src/vmm/boot/boot_params.ts";
import type { LinuxBootSetup } from "../../src/vmm/boot/linux.ts";

/** One MiB. */
export const MiB = 1024 * 1024;
/** Where a kernel without a usable pref_address is loaded: 1 MiB. */
export const HIGH = 0x100000;

/** A minimal bzImage: a valid setup header and a patterned protected-mode payload. */
export function fakeBzImage(o: {
  version?: number;
  xloadflags?: number;
  initSize?: number;
  payload?: number;
  magic?: number;
  cmdlineSize?: number;
  truncate?: number;
} = {}): Uint8Array {
  const setupSects = 4;
  const setupSize = (setupSects + 1) * 512;
  const payload = o.payload ?? 256 * 1024;
  const img = new Uint8Array(setupSize + payload);
  const dv = new DataView(img.buffer);
  const H = SETUP_HEADER;
  writeField(dv, H.setup_sects, setupSects);
  writeField(dv, H.syssize, payload / 16);
  writeField(dv, H.boot_flag, 0xaa55);
  img[H.jump.offset] = 0xeb;
  img[H.jump.offset + 1] = 0x26c - 0x202;
  writeField(dv, H.header, o.magic ?? 0x53726448);
  writeField(dv, H.version, o.version ?? 0x020f);
  writeField(dv, H.loadflags, LOADFLAGS.LOADED_HIGH);
  writeField(dv, H.code32_start, HIGH);
  writeField(dv, H.initrd_addr_max, 0x7fffffff);
  writeField(dv, H.kernel_alignment, 2 * MiB);
  writeField(dv, H.relocatable_kernel, 1);
  writeField(dv, H.xloadflags, o.xloadflags ?? XLOADFLAGS.XLF_KERNEL_64);
  writeField(dv, H.cmdline_size, o.cmdlineSize ?? 2047);
  writeField64(dv, H.pref_address, 16n * BigInt(MiB));
  writeField(dv, H.init_size, o.initSize ?? 8 * MiB);
  const version = new TextEncoder().encode("6.99.0-fake (test) #1\0");
  img.set(version, 0x400);
  writeField(dv, H.kernel_version, 0x400 - 0x200);
  for (let i = setupSize; i < img.length; i++) img[i] = (i * 7 + 3) & 0xff;
  return o.truncate ? img.subarray(0, o.truncate) : img;
}

/** The zero page (boot_params) loadLinux wrote into `ram`. */
export function zeroPage(ram: Uint8Array, setup: LinuxBootSetup): DataView {
  return new DataView(ram.buffer, ram.byteOffset + Number(setup.rsi), BOOT_PARAMS_SIZE);
}

/** The NUL-terminated string at `at` in `ram`. */
export function cString(ram: Uint8Array, at: number): string {
  const end = ram.indexOf(0, at);
  return new TextDecoder().decode(ram.subarray(at, end));
}
