/**
 * Shared definitions of the checkpoint file formats (docs/FORMAT.md): magics, versions with their
 * compatibility rule, checksums, and the one error type every reader raises.
 */
import zlib from "node:zlib";
import denoConfig from "../../deno.json" with { type: "json" };

/** The dcres release, from deno.json: recorded in every manifest and reported by the agent. */
export const DCRES_VERSION: string = denoConfig.version;

/** A semantic version of a file format. */
export interface FormatVersion {
  /** Incompatible layout changes. */
  major: number;
  /** Compatible additions a reader of the same minor or newer understands. */
  minor: number;
  /** Fixes that change no bytes' meaning. */
  patch: number;
}

/** Fragment format version written by this build. */
export const FRAGMENT_VERSION: FormatVersion = { major: 1, minor: 0, patch: 0 };
/** Manifest format version written by this build. */
export const MANIFEST_VERSION: FormatVersion = { major: 1, minor: 4, patch: 0 };

/** A checkpoint file is malformed; names the file, the byte offset and the problem. */
export class CheckpointFormatError extends Error {
  constructor(
    /** The file. */
    readonly file: string,
    /** Byte offset of the problem. */
    readonly offset: number,
    /** What is wrong. */
    readonly problem: string,
  ) {
    super(`${file}: at byte ${offset}: ${problem}`);
    this.name = "CheckpointFormatError";
  }
}

/**
 * The compatibility rule: a reader accepts a file of its own major version and a minor version no
 * newer than its own; anything else is refused by name.
 */
export function checkVersion(
  file: string,
  offset: number,
  found: FormatVersion,
  reader: FormatVersion,
  what: string,
) {
  const f = `${found.major}.${found.minor}.${found.patch}`;
  if (found.major !== reader.major || found.minor > reader.minor) {
    throw new CheckpointFormatError(
      file,
      offset,
      `${what} format version ${f} is not readable by this dcres (reads ${reader.major}.0 to ${reader.major}.${reader.minor}); use a dcres that writes ${f}`,
    );
  }
}

/** CRC-32 (zlib polynomial) of `data`, continuing from `prev`. */
export function crc32(data: Uint8Array, prev = 0): number {
  return zlib.crc32(data, prev) >>> 0;
}

/** Encodes an 8-byte ASCII magic. */
export function magic(text: string): Uint8Array {
  const m = new TextEncoder().encode(text.padEnd(8, "\0"));
  if (m.length !== 8) throw new Error(`magic ${text} must be 8 bytes`);
  return m;
}

/** True when `buf` at `off` starts with `m`. */
export function hasMagic(buf: Uint8Array, off: number, m: Uint8Array): boolean {
  for (let i = 0; i < m.length; i++) if (buf[off + i] !== m[i]) return false;
  return true;
}

/**
 * Writes the head every dcres file of this kind begins with, the 8-byte magic then the major and
 * minor version (u16, little-endian) at bytes 8 and 10; returns a view of `out` for the rest.
 */
export function writeHead(
  out: Uint8Array,
  m: Uint8Array,
  v: { major: number; minor: number },
): DataView {
  out.set(m, 0);
  const dv = new DataView(out.buffer, out.byteOffset, out.byteLength);
  dv.setUint16(8, v.major, true);
  dv.setUint16(10, v.minor, true);
  return dv;
}
