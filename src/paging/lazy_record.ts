/**
 * The record of a lazy load under way in a sub-host's page store (`VM.lazy`), so an agent killed in
 * the middle of one picks it up again instead of forgetting the pages still in the checkpoint: a
 * header (magic "DCRESPGL", format version, page count, the length and checksum of the source's
 * description), the description (opaque here; the agent writes which checkpoint and fragments), and
 * two slots, each a sequence number, a checksum and the bitmap of the pages still in the source.
 * Updates go to the slot of the older sequence number in one write, so one cut short by a kill
 * leaves the other slot, one update older, to read. The file is removed once the load is done.
 * Compatibility: a reader opens records of its own major version (any minor); a newer major is
 * refused by name.
 */
import { crc32, hasMagic, magic, writeHead } from "../ckpt/format.ts";
import { PageStoreError } from "./page_index.ts";

/** "DCRESPGL" */
export const LAZY_MAGIC: Uint8Array = magic("DCRESPGL");
/** Record format version this build writes. */
export const LAZY_VERSION = { major: 1, minor: 0 } as const;
/** Bytes of the record header. */
export const LAZY_HEADER = 32;
/** Bytes of a slot's own header (sequence number, checksum, reserved) before its bitmap. */
export const SLOT_HEADER = 16;
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
  /** Sequence number of the slot `pending` was read from (0 in a new record). */
  seq: number;
}

/** Where the parts of a record of `pages` pages with a `sourceLen`-byte description are. */
export function lazyLayout(pages: number, sourceLen: number) {
  const bitmap = Math.ceil(pages / 8);
  const slots = LAZY_HEADER + Math.ceil(sourceLen / 8) * 8;
  const slotSize = SLOT_HEADER + bitmap;
  return { bitmap, slots, slotSize, size: slots + 2 * slotSize };
}

function flaw(path: string, why: string): PageStoreError {
  return new PageStoreError(
    `${path}: ${why}; the lazy load it records cannot be resumed (restore the VM again from its ` +
      `checkpoint, then delete the file)`,
  );
}

/** A slot holding `pending` under sequence number `seq`, as written in one piece. */
export function encodeLazySlot(seq: number, pending: Uint8Array): Uint8Array {
  const out = new Uint8Array(SLOT_HEADER + pending.length);
  const dv = new DataView(out.buffer);
  dv.setBigUint64(0, BigInt(seq), true);
  out.set(pending, SLOT_HEADER);
  dv.setUint32(8, crc32(out.subarray(SLOT_HEADER), crc32(out.subarray(0, 8))), true);
  return out;
}

/** Where the slot for sequence number `seq` is, in a record of this layout. */
export function slotOffset(layout: ReturnType<typeof lazyLayout>, seq: number): number {
  return layout.slots + (seq % 2) * layout.slotSize;
}

/** A whole new record (sequence number 0 in both slots). */
export function encodeLazyRecord(r: Omit<LazyLoadRecord, "seq">): Uint8Array {
  if (r.source.length > MAX_SOURCE_BYTES) {
    throw new PageStoreError(`a lazy load's source description is over ${MAX_SOURCE_BYTES} bytes`);
  }
  const layout = lazyLayout(r.pages, r.source.length);
  const out = new Uint8Array(layout.size);
  const dv = writeHead(out, LAZY_MAGIC, LAZY_VERSION);
  dv.setUint32(12, r.pages, true);
  dv.setUint32(16, r.source.length, true);
  dv.setUint32(20, crc32(r.source), true);
  dv.setUint32(28, crc32(out.subarray(0, 28)), true);
  out.set(r.source, LAZY_HEADER);
  const slot = encodeLazySlot(0, r.pending);
  out.set(slot, layout.slots);
  out.set(slot, layout.slots + layout.slotSize);
  return out;
}

/**
 * Checks a record's header (its first LAZY_HEADER bytes, of a file of `fileSize` bytes); returns
 * the page count, the description's length and how many bytes the whole record is.
 */
export function decodeLazyHeader(
  path: string,
  h: Uint8Array,
  fileSize: number,
  maxPages: number,
): { pages: number; sourceLen: number; size: number } {
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
  const pages = dv.getUint32(12, true), sourceLen = dv.getUint32(16, true);
  if (pages < 1 || pages > maxPages) throw flaw(path, `record is of ${pages} pages`);
  if (sourceLen > MAX_SOURCE_BYTES) {
    throw flaw(path, `source description of ${sourceLen} bytes, over ${MAX_SOURCE_BYTES}`);
  }
  const { size } = lazyLayout(pages, sourceLen);
  if (fileSize < size) throw flaw(path, "record is cut short");
  if (fileSize > size) throw flaw(path, "record has bytes past its end");
  return { pages, sourceLen, size };
}

/**
 * Decodes a whole record (`bytes`, from its first byte), its pending pages from the slot of the
 * higher sequence number whose checksum holds; throws PageStoreError naming the flaw.
 */
export function decodeLazyRecord(
  path: string,
  bytes: Uint8Array,
  maxPages: number,
): LazyLoadRecord {
  const { pages, sourceLen } = decodeLazyHeader(path, bytes, bytes.length, maxPages);
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.length);
  const source = bytes.slice(LAZY_HEADER, LAZY_HEADER + sourceLen);
  if (crc32(source) !== dv.getUint32(20, true)) {
    throw flaw(path, "source description checksum mismatch");
  }
  const layout = lazyLayout(pages, sourceLen);
  let best: { seq: number; at: number } | undefined;
  for (const at of [layout.slots, layout.slots + layout.slotSize]) {
    const slot = bytes.subarray(at, at + layout.slotSize);
    const crc = crc32(slot.subarray(SLOT_HEADER), crc32(slot.subarray(0, 8)));
    if (crc !== dv.getUint32(at + 8, true)) continue;
    const seq = dv.getBigUint64(at, true);
    if (seq > BigInt(Number.MAX_SAFE_INTEGER)) continue;
    if (!best || Number(seq) > best.seq) best = { seq: Number(seq), at };
  }
  if (!best) throw flaw(path, "both copies of its pending bitmap fail their checksums");
  const from = best.at + SLOT_HEADER;
  return { pages, pending: bytes.slice(from, from + layout.bitmap), source, seq: best.seq };
}
