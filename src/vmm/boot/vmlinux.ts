/**
 * Extracts the vmlinux ELF a bzImage carries compressed (`payload_offset`/`payload_length`, boot
 * protocol 2.08+), so the VMM can load it itself and skip the kernel's decompressor, as Firecracker
 * does with an uncompressed kernel. Under PVM the decompressor alone runs for minutes, because the
 * guest's ring-0 code is emulated.
 */
import { gunzipSync, zstdDecompressSync } from "node:zlib";
import { BootImageError, type BzImageHeader } from "./bzimage.ts";
import { lz4DecompressLegacy, Lz4Error } from "./lz4.ts";

/** The compression of a bzImage payload, recognised by its magic bytes. */
export type PayloadFormat = "lz4" | "gzip" | "zstd" | "xz" | "lzma" | "bzip2" | "lzo" | "unknown";

/** Formats `extractVmlinux` can decode; the others boot through the kernel's own decompressor. */
export const DECODABLE_PAYLOADS: readonly PayloadFormat[] = ["lz4", "gzip", "zstd"];

/** The outcome of `extractVmlinux`. */
export type VmlinuxExtraction =
  | { ok: true; format: PayloadFormat; elf: Uint8Array }
  | { ok: false; format: PayloadFormat; reason: string };

const MAGICS: Array<[PayloadFormat, number[]]> = [
  ["gzip", [0x1f, 0x8b]],
  ["zstd", [0x28, 0xb5, 0x2f, 0xfd]],
  ["lz4", [0x02, 0x21, 0x4c, 0x18]],
  ["xz", [0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00]],
  ["bzip2", [0x42, 0x5a, 0x68]],
  ["lzo", [0x89, 0x4c, 0x5a, 0x4f]],
  // The kernel's lzma payload is "lzma -9" (the .lzma "alone" format): properties byte 0x5d.
  ["lzma", [0x5d, 0x00, 0x00]],
];
// Every x86 compressor except gzip gets the uncompressed size appended by the build (size_append).
const SIZE_WORD = 4;
const ELF_MAGIC = [0x7f, 0x45, 0x4c, 0x46];

/** Recognises a payload's compression from its first bytes. */
export function payloadFormat(payload: Uint8Array): PayloadFormat {
  for (const [format, magic] of MAGICS) {
    if (magic.every((b, i) => payload[i] === b)) return format;
  }
  return "unknown";
}

/** The payload's format as its magic says, or "unknown" if the header declares none in bounds. */
export function payloadFormatOf(kernel: Uint8Array, hdr: BzImageHeader): PayloadFormat {
  const start = hdr.setupSize + hdr.payloadOffset;
  if (hdr.payloadLength === 0 || start + hdr.payloadLength > kernel.length) return "unknown";
  return payloadFormat(kernel.subarray(start, start + hdr.payloadLength));
}

/** The compressed payload bytes inside `kernel`; throws BootImageError when out of bounds. */
export function payloadBytes(kernel: Uint8Array, hdr: BzImageHeader, path: string): Uint8Array {
  const start = hdr.setupSize + hdr.payloadOffset;
  const end = start + hdr.payloadLength;
  if (hdr.payloadLength === 0 || end > kernel.length) {
    throw new BootImageError(
      path,
      `payload_offset 0x${hdr.payloadOffset.toString(16)} + payload_length ` +
        `${hdr.payloadLength} lies outside the ${hdr.protectedModeSize}-byte protected-mode ` +
        `kernel; the image is damaged`,
    );
  }
  return kernel.subarray(start, end);
}

/**
 * Decompresses the bzImage's payload into the vmlinux ELF. Returns `ok: false` with the reason
 * for a format this VMM does not decode (the caller then boots the bzImage as is); throws
 * BootImageError if a format it does decode is damaged.
 */
export function extractVmlinux(
  kernel: Uint8Array,
  hdr: BzImageHeader,
  path: string,
): VmlinuxExtraction {
  if (hdr.payloadLength === 0) {
    return { ok: false, format: "unknown", reason: "the setup header declares no payload" };
  }
  const payload = payloadBytes(kernel, hdr, path);
  const format = payloadFormat(payload);
  if (!DECODABLE_PAYLOADS.includes(format)) {
    return {
      ok: false,
      format,
      reason: `${format} payload; this VMM decodes only lz4, gzip, zstd`,
    };
  }
  const fileOffset = hdr.setupSize + hdr.payloadOffset;
  let elf: Uint8Array;
  try {
    elf = decode(format, payload, path);
  } catch (e) {
    if (e instanceof BootImageError) throw e;
    // Offsets are reported from the file's start, where a hex dump of the image would show them.
    const why = e instanceof Lz4Error
      ? `at file offset 0x${(fileOffset + e.offset).toString(16)}: ${e.reason}`
      : `(payload at file offset 0x${fileOffset.toString(16)}): ${(e as Error).message}`;
    throw new BootImageError(
      path,
      `${format} payload does not decode ${why}; the image is damaged`,
    );
  }
  if (!ELF_MAGIC.every((b, i) => elf[i] === b)) {
    throw new BootImageError(path, `the ${format} payload does not decompress to an ELF file`);
  }
  return { ok: true, format, elf };
}

function decode(format: PayloadFormat, payload: Uint8Array, path: string): Uint8Array {
  // The magic table only matches the legacy frame, the one format the kernel build writes.
  if (format === "lz4") return lz4DecompressLegacy(payload, path);
  // gzip ends with its own ISIZE, which gunzip checks.
  if (format === "gzip") return toBytes(gunzipSync(payload));
  // The zstd frame is followed by the build's size word, which is not zstd data: cut it off.
  const out = toBytes(zstdDecompressSync(payload.subarray(0, payload.length - SIZE_WORD)));
  const dv = new DataView(payload.buffer, payload.byteOffset, payload.byteLength);
  const size = dv.getUint32(payload.length - SIZE_WORD, true);
  if (size !== out.length % 2 ** 32) {
    throw new BootImageError(
      path,
      `zstd payload's size word says ${size} bytes but it decompresses to ${out.length}; ` +
        `the image is damaged`,
    );
  }
  return out;
}

function toBytes(b: Uint8Array): Uint8Array {
  return new Uint8Array(b.buffer, b.byteOffset, b.byteLength);
}
