/**
 * The record of a lazy load under way in a sub-host's page store (`VM.lazy`), so an agent killed in
 * the middle of one picks it up again instead of forgetting the pages still in the checkpoint: a
 * header (magic "DCRESPGL", format version, page count, checksums, the length of the source's
 * description), the bitmap of the pages still in the source, written through as pages come in,
 * and the description (opaque here; the agent writes which checkpoint and fragments). The file is
 * removed once the load is done. Compatibility: a reader opens records of its own major version
 * (any minor); a newer major is refused by name.
 */
import { crc32, hasMagic, magic, writeHead } from "../ckpt/format.ts";
import { PageStoreError } from "./page_index.ts";

/** "DCRESPGL" */
export const LAZY_MAGIC: Uint8Array = magic("DCRESPGL");
/** Record format version this build writes. */
export const LAZY_VERSION = { major: 1, minor: 0 } as const;
/** Bytes of the record header. */
export const LAZY_HEADER = 32;
/** Most bytes of a source's description. */
export const MAX_SOURCE_BYTES = 64 << 10;

/** A decoded record: the VM's page count, the pages still in the source, and the source. */
export interface LazyLoadRecord {
  /** Pages of the VM's memory. */
  pages: number;
  /** Bit g set: page g is still in the source. */
  pending: Uint8Array;
  /** The source's description, as the agent wrote it. */
  source: Uint8Array;
}

function flaw(path: string, why: string): PageStoreError {
  return new PageStoreError(
    `${path}: ${why}; the lazy load it records cannot be resumed (restore the VM again from its ` +
      `checkpoint, then delete the file)`,
  );
}

/** The header of a record of `pages` pages, `pending` its bitmap, `source` its description. */
export function encodeLazyHeader(
  pages: number,
  pending: Uint8Array,
  source: Uint8Array,
): Uint8Array {
  const h = new Uint8Array(LAZY_HEADER);
  const dv = writeHead(h, LAZY_MAGIC, LAZY_VERSION);
  dv.setUint32(12, pages, true);
  dv.setUint32(16, crc32(pending), true);
  dv.setUint32(20, source.length, true);
  dv.setUint32(24, crc32(source), true);
  dv.setUint32(28, crc32(h.subarray(0, 28)), true);
  return h;
}

/** A whole record: header, bitmap, description. */
export function encodeLazyRecord(r: LazyLoadRecord): Uint8Array {
  if (r.source.length > MAX_SOURCE_BYTES) {
    throw new PageStoreError(`a lazy load's source description is over ${MAX_SOURCE_BYTES} bytes`);
  }
  const out = new Uint8Array(LAZY_HEADER + r.pending.length + r.source.length);
  out.set(encodeLazyHeader(r.pages, r.pending, r.source), 0);
  out.set(r.pending, LAZY_HEADER);
  out.set(r.source, LAZY_HEADER + r.pending.length);
  return out;
}

/**
 * Checks a record's header (its first LAZY_HEADER bytes, of a file of `fileSize` bytes); returns
 * the page count and how many bytes the whole record is, so no more is read.
 */
export function decodeLazyHeader(
  path: string,
  h: Uint8Array,
  fileSize: number,
  maxPages: number,
): { pages: number; size: number } {
  if (h.length < LAZY_HEADER || fileSize < LAZY_HEADER) {
    throw flaw(path, "record is too short for its header");
  }
  if (!hasMagic(h, 0, LAZY_MAGIC)) throw flaw(path, "not a dcres lazy load record (wrong magic)");
  const dv = new DataView(h.buffer, h.byteOffset, LAZY_HEADER);
  const major = dv.getUint16(8, true);
  if (major > LAZY_VERSION.major) {
    throw new PageStoreError(
      `${path}: lazy load record format ${major}.${
        dv.getUint16(10, true)
      } is newer than this dcres (${LAZY_VERSION.major}.${LAZY_VERSION.minor}); upgrade dcres on this host`,
    );
  }
  if (crc32(h.subarray(0, 28)) !== dv.getUint32(28, true)) {
    throw flaw(path, "record header checksum mismatch");
  }
  const pages = dv.getUint32(12, true), sourceLen = dv.getUint32(20, true);
  if (pages < 1 || pages > maxPages) throw flaw(path, `record is of ${pages} pages`);
  if (sourceLen > MAX_SOURCE_BYTES) {
    throw flaw(path, `source description of ${sourceLen} bytes, over ${MAX_SOURCE_BYTES}`);
  }
  const size = LAZY_HEADER + Math.ceil(pages / 8) + sourceLen;
  if (fileSize < size) throw flaw(path, "record is cut short");
  if (fileSize > size) throw flaw(path, "record has bytes past its end");
  return { pages, size };
}

/** Decodes a whole record (`bytes`, from its first byte); throws PageStoreError naming the flaw. */
export function decodeLazyRecord(
  path: string,
  bytes: Uint8Array,
  maxPages: number,
): LazyLoadRecord {
  const { pages } = decodeLazyHeader(path, bytes, bytes.length, maxPages);
  const dv = new DataView(bytes.buffer, bytes.byteOffset, LAZY_HEADER);
  const bitmap = Math.ceil(pages / 8);
  const pending = bytes.slice(LAZY_HEADER, LAZY_HEADER + bitmap);
  if (crc32(pending) !== dv.getUint32(16, true)) throw flaw(path, "bitmap checksum mismatch");
  const source = bytes.slice(LAZY_HEADER + bitmap);
  if (crc32(source) !== dv.getUint32(24, true)) {
    throw flaw(path, "source description checksum mismatch");
  }
  return { pages, pending, source };
}
