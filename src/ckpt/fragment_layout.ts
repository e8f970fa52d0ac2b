/**
 * Byte layout of a fragment file (docs/FORMAT.md): a 4 KiB header, page data in chunks, an index
 * (chunk table then page table), and a 64-byte footer at the end. All integers little-endian.
 */
import { array, pad, struct, u16, u32, u64, u8 } from "../ffi/struct.ts";
import { magic } from "./format.ts";
import { PAGE_SIZE } from "../accel/accel.ts";

/** "DCRFRAG" */
export const FRAGMENT_MAGIC: Uint8Array = magic("DCRFRAG");
/** "DCRFEND" */
export const FOOTER_MAGIC: Uint8Array = magic("DCRFEND");
/** Size of the header; page data starts here, page-aligned. */
export const HEADER_SIZE = 4096;

/** The fixed part of the header (the rest of the 4 KiB is zero; the CRC covers all of it). */
export const fragmentHeader = struct("fragment_header", {
  magic: array(u8, 8),
  major: u16,
  minor: u16,
  patch: u16,
  reserved0: pad(2),
  header_size: u32,
  page_size: u32,
  checkpoint_id: array(u8, 16),
  generation: u64,
  flags: u32,
  reserved1: pad(4),
});
/** Offset of the header CRC-32 (over bytes 0..4092). */
export const HEADER_CRC_OFFSET = HEADER_SIZE - 4;

/** Header flags. */
export const FRAGMENT_FLAG = { ZSTD: 1 } as const;

/** One chunk: a run of stored pages written by one write call; crc32 covers zstd chunks only (0 otherwise). */
export const chunkEntry = struct("chunk_entry", {
  offset: u64,
  stored_len: u32,
  pages: u32,
  flags: u32,
  crc32: u32,
});
/** Chunk flags. */
export const CHUNK_FLAG = { ZSTD: 1 } as const;

/** One page: where its bytes are and their CRC-32 (of the 4 KiB page, uncompressed). */
export const pageEntry = struct("page_entry", {
  gfn: u64,
  chunk: u32,
  slot: u32,
  crc32: u32,
  flags: u32,
});
/** Page flags. */
export const PAGE_FLAG = { ZERO: 1 } as const;
/** `chunk` of a page that is not stored (zero). */
export const NO_CHUNK = 0xffffffff;

/** The footer: where the index is and what it holds. */
export const fragmentFooter = struct("fragment_footer", {
  magic: array(u8, 8),
  index_offset: u64,
  index_len: u64,
  chunks: u32,
  pages: u32,
  zero_pages: u32,
  index_crc32: u32,
  data_bytes: u64,
  reserved: pad(12, 4),
  footer_crc32: u32,
});

/** Most precopy rounds a checkpoint runs, of any strategy (one host: 30, a split VM: 10). */
export const MAX_PRECOPY_ROUNDS = 30;

/**
 * The most bytes a fragment of a host holding `pages` pages can reach: every page saved in each
 * precopy round and once more, with its index. A replica's agent refuses a stream past it, and a
 * manifest recording a bigger fragment is refused.
 */
export function fragmentBound(pages: number): number {
  const copies = pages * (MAX_PRECOPY_ROUNDS + 1);
  return HEADER_SIZE + copies * (PAGE_SIZE + pageEntry.size + chunkEntry.size) + (1 << 20);
}
