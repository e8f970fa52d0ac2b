/**
 * Reads and validates a bzImage's setup header (Documentation/arch/x86/boot.rst), so the loader
 * can refuse a file it cannot boot with a message that says what to pass instead.
 */
import {
  BOOT_FLAG_MAGIC,
  HDRS_MAGIC,
  LOADFLAGS,
  readField,
  readField64,
  SETUP_HEADER,
  SETUP_HEADER_LIMIT,
  SETUP_HEADER_OFFSET,
  XLOADFLAGS,
} from "./boot_params.ts";

/** A kernel image or boot input the loader cannot use; the message names the file and a fix. */
export class BootImageError extends Error {
  /** The file (or input) at fault. */
  readonly path: string;

  /** `message` is the reason and the fix; it is prefixed with `path`. */
  constructor(path: string, message: string) {
    super(`${path}: ${message}`);
    this.name = "BootImageError";
    this.path = path;
  }
}

/** The 64-bit entry point and xloadflags arrived with protocol 2.12 (Linux 3.8). */
export const MIN_BOOT_PROTOCOL = 0x020c;

const SECTOR = 512;
// setup_sects == 0 means 4 for compatibility with ancient images.
const DEFAULT_SETUP_SECTS = 4;
// The version string offset in the header is relative to the start of the setup code.
const KERNEL_VERSION_BASE = 0x200;
const FIX = "pass a Linux bzImage such as /boot/vmlinuz-*";

/** What a loader needs from a bzImage's setup header. */
export interface BzImageHeader {
  /** Boot protocol version, e.g. 0x020f for 2.15. */
  version: number;
  /** Sectors of real-mode setup after the boot sector. */
  setupSects: number;
  /** Bytes before the protected-mode kernel: boot sector plus setup. */
  setupSize: number;
  /** Bytes of the protected-mode kernel (what gets loaded high). */
  protectedModeSize: number;
  /** `code32_start`: the default 32-bit load address. */
  code32Start: number;
  /** `loadflags`. */
  loadflags: number;
  /** `xloadflags`. */
  xloadflags: number;
  /** `kernel_alignment`. */
  kernelAlignment: number;
  /** `relocatable_kernel` != 0. */
  relocatable: boolean;
  /** `init_size`: bytes the kernel needs from its run-time start address. */
  initSize: number;
  /** `pref_address`: the preferred load address. */
  prefAddress: bigint;
  /** `cmdline_size`: the longest accepted command line, without its NUL. */
  cmdlineSize: number;
  /** `initrd_addr_max`: highest address the initrd's last byte may occupy. */
  initrdAddrMax: number;
  /** End of the setup header (exclusive), as the image declares it, capped at 0x290. */
  headerEnd: number;
  /** `payload_offset`: the compressed vmlinux, relative to the protected-mode kernel. */
  payloadOffset: number;
  /** `payload_length`: its length in bytes. */
  payloadLength: number;
  /** The kernel's version string, if the image has one. */
  kernelVersion: string | undefined;
}

/** Formats a protocol version as "major.minor". */
export function protocolText(version: number): string {
  return `${version >> 8}.${version & 0xff}`;
}

/** Parses and validates `image`'s setup header; throws BootImageError naming `path`. */
export function parseBzImage(image: Uint8Array, path: string): BzImageHeader {
  const minLen = SETUP_HEADER.init_size.offset + SETUP_HEADER.init_size.width;
  if (image.length < minLen) {
    throw new BootImageError(path, `${image.length} bytes is too small for a bzImage; ${FIX}`);
  }
  const dv = new DataView(image.buffer, image.byteOffset, image.byteLength);
  if (readField(dv, SETUP_HEADER.header) !== HDRS_MAGIC) {
    const at = SETUP_HEADER.header.offset.toString(16);
    throw new BootImageError(path, `not a bzImage (no HdrS magic at 0x${at}); ${FIX}`);
  }
  const version = readField(dv, SETUP_HEADER.version);
  if (version < MIN_BOOT_PROTOCOL) {
    throw new BootImageError(
      path,
      `boot protocol ${protocolText(version)} is older than the ${
        protocolText(MIN_BOOT_PROTOCOL)
      } the 64-bit entry needs; use a kernel from Linux 3.8 or later`,
    );
  }
  const xloadflags = readField(dv, SETUP_HEADER.xloadflags);
  if (!(xloadflags & XLOADFLAGS.XLF_KERNEL_64)) {
    throw new BootImageError(
      path,
      "kernel has no 64-bit entry point (XLF_KERNEL_64 unset in xloadflags); use an x86-64 kernel",
    );
  }
  const loadflags = readField(dv, SETUP_HEADER.loadflags);
  if (!(loadflags & LOADFLAGS.LOADED_HIGH)) {
    throw new BootImageError(path, `zImage (loaded low) is not supported; ${FIX}`);
  }
  if (readField(dv, SETUP_HEADER.boot_flag) !== BOOT_FLAG_MAGIC) {
    throw new BootImageError(path, `boot_flag is not 0xaa55, the image is damaged; ${FIX}`);
  }
  const setupSects = readField(dv, SETUP_HEADER.setup_sects) || DEFAULT_SETUP_SECTS;
  const setupSize = (setupSects + 1) * SECTOR;
  const syssize = readField(dv, SETUP_HEADER.syssize) * 16;
  if (image.length <= setupSize || image.length - setupSize < syssize) {
    throw new BootImageError(
      path,
      `truncated: header promises ${setupSize} bytes of setup and ${syssize} of kernel ` +
        `but the file has ${image.length}; copy the image again`,
    );
  }
  // The jump at 0x200 is "eb XX": XX is the distance from 0x202 to the header's end.
  const jumpEnd = SETUP_HEADER.jump.offset + SETUP_HEADER.jump.width;
  const headerEnd = Math.min(jumpEnd + image[SETUP_HEADER.jump.offset + 1], SETUP_HEADER_LIMIT);
  if (headerEnd < minLen) {
    throw new BootImageError(
      path,
      `setup header ends at 0x${headerEnd.toString(16)}, before init_size; the image is damaged`,
    );
  }
  return {
    version,
    setupSects,
    setupSize,
    protectedModeSize: image.length - setupSize,
    code32Start: readField(dv, SETUP_HEADER.code32_start),
    loadflags,
    xloadflags,
    kernelAlignment: readField(dv, SETUP_HEADER.kernel_alignment),
    relocatable: readField(dv, SETUP_HEADER.relocatable_kernel) !== 0,
    initSize: readField(dv, SETUP_HEADER.init_size),
    prefAddress: readField64(dv, SETUP_HEADER.pref_address),
    cmdlineSize: readField(dv, SETUP_HEADER.cmdline_size),
    initrdAddrMax: readField(dv, SETUP_HEADER.initrd_addr_max),
    headerEnd,
    payloadOffset: readField(dv, SETUP_HEADER.payload_offset),
    payloadLength: readField(dv, SETUP_HEADER.payload_length),
    kernelVersion: kernelVersionString(image, dv, setupSize),
  };
}

/** The protected-mode kernel: the bytes the loader copies to the load address. */
export function protectedModeKernel(image: Uint8Array, hdr: BzImageHeader): Uint8Array {
  return image.subarray(hdr.setupSize);
}

/** The setup header bytes a loader copies into boot_params (0x1f1 up to the declared end). */
export function setupHeaderBytes(image: Uint8Array, hdr: BzImageHeader): Uint8Array {
  return image.subarray(SETUP_HEADER_OFFSET, hdr.headerEnd);
}

function kernelVersionString(image: Uint8Array, dv: DataView, setupSize: number) {
  const rel = readField(dv, SETUP_HEADER.kernel_version);
  if (rel === 0) return undefined;
  const start = rel + KERNEL_VERSION_BASE;
  if (start >= setupSize) return undefined;
  let end = start;
  while (end < setupSize && image[end] !== 0) end++;
  return new TextDecoder().decode(image.subarray(start, end));
}
