/**
 * The index of a sub-host's page store (`VM.held`): a header (magic "DCRESPGS", format version,
 * page count, checksums), the bitmap of the pages held, and a CRC-32 of every page.
 * Compatibility: a reader opens indexes of its own major version (any minor); a newer major is
 * refused by name.
 */
import { crc32, hasMagic, magic, writeHead } from "../ckpt/format.ts";

/** The store refused: full, unknown VM, a page it does not hold, or a damaged file. */
export class PageStoreError extends Error {
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "PageStoreError";
  }
}

/** "DCRESPGS" */
export const STORE_MAGIC: Uint8Array = magic("DCRESPGS");
/** Index format version this build writes. */
export const STORE_VERSION = { major: 1, minor: 0 } as const;
/** Bytes of the index header. */
export const INDEX_HEADER = 32;
/** Where the parts of an index of `pages` pages live. */
export function indexLayout(pages: number) {
  const bitmap = Math.ceil(pages / 8);
  const crcs = INDEX_HEADER + Math.ceil(bitmap / 8) * 8;
  return { bitmap, crcs, size: crcs + pages * 4 };
}

/** The header of an index of `pages` pages holding `held` (its bitmap). */
export function encodeIndexHeader(pages: number, held: Uint8Array): Uint8Array {
  const h = new Uint8Array(INDEX_HEADER);
  const dv = writeHead(h, STORE_MAGIC, STORE_VERSION);
  dv.setUint32(12, pages, true);
  dv.setUint32(16, crc32(held), true);
  dv.setUint32(20, crc32(h.subarray(0, 20)), true);
  return h;
}

/** A flaw of index `path`, with what to do. */
export function indexFlaw(path: string, why: string): PageStoreError {
  return new PageStoreError(
    `${path}: ${why}; its pages cannot be trusted (stop the VM, or delete the file if it is gone)`,
  );
}

/**
 * Checks an index's header (its first INDEX_HEADER bytes, of a file of `fileSize` bytes) against a VM of
 * `pages` pages; returns how many bytes of the file are the index, so no more is read.
 */
export function decodeIndexHeader(
  path: string,
  h: Uint8Array,
  pages: number,
  fileSize: number,
): number {
  if (h.length < INDEX_HEADER || fileSize < INDEX_HEADER) {
    throw indexFlaw(path, "index is too short for its header");
  }
  const dv = new DataView(h.buffer, h.byteOffset, INDEX_HEADER);
  if (!hasMagic(h, 0, STORE_MAGIC)) {
    throw indexFlaw(path, "not a dcres page store index (wrong magic)");
  }
  const major = dv.getUint16(8, true);
  if (major > STORE_VERSION.major) {
    throw new PageStoreError(
      `${path}: page store format ${major}.${
        dv.getUint16(10, true)
      } is newer than this dcres (${STORE_VERSION.major}.${STORE_VERSION.minor}); upgrade dcres on this host`,
    );
  }
  if (crc32(h.subarray(0, 20)) !== dv.getUint32(20, true)) {
    throw indexFlaw(path, "index header checksum mismatch");
  }
  const had = dv.getUint32(12, true);
  if (had !== pages) {
    throw new PageStoreError(
      `this host's page store ${path} has ${had} pages, the request says ${pages}`,
    );
  }
  const { bitmap, size } = indexLayout(pages);
  if (fileSize < INDEX_HEADER + bitmap) throw indexFlaw(path, "index is truncated in its bitmap");
  if (fileSize < size) throw indexFlaw(path, "index is truncated in its page checksums");
  return size;
}

/**
 * Decodes a whole index (`bytes`, from its first byte) of a VM of `pages` pages into the held bitmap
 * and the page checksums, views of `bytes`; throws PageStoreError naming the flaw.
 */
export function decodeIndex(
  path: string,
  bytes: Uint8Array,
  pages: number,
): { held: Uint8Array; crcs: Uint32Array } {
  decodeIndexHeader(path, bytes, pages, bytes.length);
  const { bitmap, crcs } = indexLayout(pages);
  const held = bytes.slice(INDEX_HEADER, INDEX_HEADER + bitmap);
  const dv = new DataView(bytes.buffer, bytes.byteOffset, INDEX_HEADER);
  if (crc32(held) !== dv.getUint32(16, true)) {
    throw indexFlaw(path, "held bitmap checksum mismatch");
  }
  const table = new Uint32Array(pages);
  new Uint8Array(table.buffer).set(bytes.subarray(crcs, crcs + pages * 4));
  return { held, crcs: table };
}
