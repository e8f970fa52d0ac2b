/**
 * Reads and checks a fragment: footer, index and header are validated on open (every field, every
 * checksum); page reads check each page's CRC-32. Any problem is a CheckpointFormatError naming the
 * file, the byte offset and what is wrong.
 */
import zlib from "node:zlib";
import * as libc from "../ffi/libc.ts";
import { openRegular } from "../ffi/regular_file.ts";
import {
  CheckpointFormatError,
  checkVersion,
  crc32,
  FRAGMENT_VERSION,
  hasMagic,
} from "./format.ts";
import {
  CHUNK_FLAG,
  chunkEntry,
  FOOTER_MAGIC,
  FRAGMENT_MAGIC,
  fragmentFooter,
  fragmentHeader,
  HEADER_CRC_OFFSET,
  HEADER_SIZE,
  NO_CHUNK,
  PAGE_FLAG,
  pageEntry,
} from "./fragment_layout.ts";
import { PAGE_SIZE } from "../accel/accel.ts";

/** A chunk as indexed. */
export interface ChunkInfo {
  /** File offset. */
  offset: number;
  /** Bytes on disk. */
  len: number;
  /** Pages in it. */
  pages: number;
  /** zstd-compressed. */
  compressed: boolean;
  /** CRC-32 of the stored bytes. */
  crc: number;
}

/** An open, validated fragment. */
export class FragmentReader {
  private constructor(
    /** The file. */
    readonly path: string,
    private readonly fd: number,
    /** Checkpoint id from the header. */
    readonly checkpointId: Uint8Array,
    /** Generation from the header. */
    readonly generation: number,
    /** Chunks in file order. */
    readonly chunks: ChunkInfo[],
    /** Page gfns, ascending. */
    readonly gfns: Float64Array,
    /** Chunk of each page (NO_CHUNK for zero pages). */
    readonly pageChunk: Uint32Array,
    /** Slot of each page in its chunk. */
    readonly pageSlot: Uint32Array,
    /** CRC-32 of each page. */
    readonly pageCrc: Uint32Array,
    /** Flags of each page. */
    readonly pageFlags: Uint32Array,
    /** CRC-32 of the footer (the manifest binds it). */
    readonly footerCrc: number,
    /** File size. */
    readonly size: number,
  ) {}

  /** Opens and validates `path`. */
  static open(path: string): FragmentReader {
    let fd: number, size: number;
    try {
      ({ fd, size } = openRegular(path));
    } catch (e) {
      throw new CheckpointFormatError(path, 0, (e as Error).message.replace(`${path}: `, ""));
    }
    try {
      return FragmentReader.parse(path, fd, size);
    } catch (e) {
      libc.close(fd);
      throw e;
    }
  }

  private static parse(path: string, fd: number, size: number): FragmentReader {
    const bad = (off: number, what: string): never => {
      throw new CheckpointFormatError(path, off, what);
    };
    if (size < HEADER_SIZE + fragmentFooter.size) {
      bad(size, `file is ${size} bytes, shorter than a header and footer (truncated?)`);
    }
    const header = readAt(path, fd, 0, HEADER_SIZE);
    if (!hasMagic(header, 0, FRAGMENT_MAGIC)) bad(0, "not a dcres fragment (wrong magic)");
    const h = fragmentHeader.decode(header);
    checkVersion(path, 8, h, FRAGMENT_VERSION, "fragment");
    const hcrc = new DataView(header.buffer).getUint32(HEADER_CRC_OFFSET, true);
    if (crc32(header.subarray(0, HEADER_CRC_OFFSET)) !== hcrc) {
      bad(HEADER_CRC_OFFSET, "header checksum mismatch");
    }
    if (h.header_size !== HEADER_SIZE || h.page_size !== PAGE_SIZE) {
      bad(16, `unsupported header size ${h.header_size} or page size ${h.page_size}`);
    }

    const footerOff = size - fragmentFooter.size;
    const fb = readAt(path, fd, footerOff, fragmentFooter.size);
    if (!hasMagic(fb, 0, FOOTER_MAGIC)) {
      bad(footerOff, "no footer (the fragment was not finished, or is truncated)");
    }
    const f = fragmentFooter.decode(fb);
    const footerCrc = crc32(fb.subarray(0, fb.length - 4));
    if (footerCrc !== f.footer_crc32) bad(footerOff + fb.length - 4, "footer checksum mismatch");
    const indexOff = Number(f.index_offset), indexLen = Number(f.index_len);
    if (indexOff < HEADER_SIZE || indexOff + indexLen !== footerOff) {
      bad(
        footerOff + 8,
        `index at ${indexOff}+${indexLen} does not end at the footer (${footerOff})`,
      );
    }
    if (indexLen !== f.chunks * chunkEntry.size + f.pages * pageEntry.size) {
      bad(
        footerOff + 16,
        `index length ${indexLen} does not match ${f.chunks} chunks and ${f.pages} pages`,
      );
    }
    if (Number(f.data_bytes) !== indexOff - HEADER_SIZE) {
      bad(footerOff + 40, "data size does not match the index position");
    }
    const index = readAt(path, fd, indexOff, indexLen);
    if (crc32(index) !== f.index_crc32) bad(indexOff, "index checksum mismatch");
    const dv = new DataView(index.buffer);
    const chunks: ChunkInfo[] = [];
    let expect = HEADER_SIZE;
    for (let i = 0; i < f.chunks; i++) {
      const c = chunkEntry.read(dv, i * chunkEntry.size);
      const off = Number(c.offset);
      if (off !== expect || c.stored_len <= 0 || off + c.stored_len > indexOff) {
        bad(
          indexOff + i * chunkEntry.size,
          `chunk ${i} at ${off}+${c.stored_len} is outside the data region`,
        );
      }
      const compressed = (c.flags & CHUNK_FLAG.ZSTD) !== 0;
      if (!compressed && c.stored_len !== c.pages * PAGE_SIZE) {
        bad(
          indexOff + i * chunkEntry.size,
          `chunk ${i} length ${c.stored_len} is not ${c.pages} pages`,
        );
      }
      chunks.push({ offset: off, len: c.stored_len, pages: c.pages, compressed, crc: c.crc32 });
      expect = off + c.stored_len;
    }
    if (expect !== indexOff) bad(indexOff, "chunks do not fill the data region");
    const n = f.pages;
    const gfns = new Float64Array(n), pc = new Uint32Array(n), ps = new Uint32Array(n);
    const crcs = new Uint32Array(n), flags = new Uint32Array(n);
    let zero = 0;
    const base = f.chunks * chunkEntry.size;
    for (let i = 0; i < n; i++) {
      const at = base + i * pageEntry.size;
      const p = pageEntry.read(dv, at);
      gfns[i] = Number(p.gfn);
      if (i > 0 && gfns[i] <= gfns[i - 1]) {
        bad(indexOff + at, `page table not strictly ascending at gfn ${gfns[i]}`);
      }
      if (p.flags & PAGE_FLAG.ZERO) {
        zero++;
        if (p.chunk !== NO_CHUNK) bad(indexOff + at, `zero page ${gfns[i]} points at a chunk`);
      } else if (p.chunk >= chunks.length || p.slot >= chunks[p.chunk].pages) {
        bad(
          indexOff + at,
          `page ${gfns[i]} points at chunk ${p.chunk} slot ${p.slot}, which does not exist`,
        );
      }
      pc[i] = p.chunk;
      ps[i] = p.slot;
      crcs[i] = p.crc32;
      flags[i] = p.flags;
    }
    if (zero !== f.zero_pages) {
      bad(footerOff + 32, `footer says ${f.zero_pages} zero pages, index has ${zero}`);
    }
    return new FragmentReader(
      path,
      fd,
      Uint8Array.from(h.checkpoint_id),
      Number(h.generation),
      chunks,
      gfns,
      pc,
      ps,
      crcs,
      flags,
      footerCrc,
      size,
    );
  }

  /** Number of pages indexed. */
  get pages(): number {
    return this.gfns.length;
  }

  /** Index of `gfn` in the page table, or -1. */
  find(gfn: number): number {
    let lo = 0, hi = this.gfns.length - 1;
    while (lo <= hi) {
      const mid = (lo + hi) >>> 1;
      const g = this.gfns[mid];
      if (g === gfn) return mid;
      if (g < gfn) lo = mid + 1;
      else hi = mid - 1;
    }
    return -1;
  }

  /** File offset of page `i` (uncompressed chunks only). */
  pageOffset(i: number): number {
    return this.chunks[this.pageChunk[i]].offset + this.pageSlot[i] * PAGE_SIZE;
  }

  /**
   * Reads pages `idx` (indices into the page table) into `dst` at `dstOffsets[k]` (default gfn*4096),
   * checking each CRC-32. Adjacent pages become one preadv; compressed chunks are inflated once.
   */
  readInto(
    idx: ArrayLike<number>,
    dst: Uint8Array<ArrayBuffer>,
    dstBase: bigint,
    dstOffsets?: ArrayLike<number>,
  ): void {
    const inflated = new Map<number, Uint8Array>();
    let iov: Array<[Deno.PointerValue, number]> = [];
    let fileOff = -1, runBytes = 0;
    const flush = () => {
      if (!iov.length) return;
      const n = libc.preadv(this.fd, iov, fileOff);
      if (n !== runBytes) {
        throw new CheckpointFormatError(
          this.path,
          fileOff + n,
          `short read (${n} of ${runBytes} bytes): truncated`,
        );
      }
      iov = [];
      runBytes = 0;
    };
    for (let k = 0; k < idx.length; k++) {
      const i = idx[k];
      const off = dstOffsets ? dstOffsets[k] : this.gfns[i] * PAGE_SIZE;
      if (this.pageFlags[i] & PAGE_FLAG.ZERO) {
        dst.fill(0, off, off + PAGE_SIZE);
        continue;
      }
      const chunk = this.chunks[this.pageChunk[i]];
      if (chunk.compressed) {
        let raw = inflated.get(this.pageChunk[i]);
        if (!raw) {
          raw = this.inflate(this.pageChunk[i]);
          inflated.set(this.pageChunk[i], raw);
        }
        dst.set(
          raw.subarray(this.pageSlot[i] * PAGE_SIZE, (this.pageSlot[i] + 1) * PAGE_SIZE),
          off,
        );
        continue;
      }
      const fo = this.pageOffset(i);
      const addr = dstBase + BigInt(off);
      if (iov.length > 0 && fo === fileOff + runBytes && iov.length < 1024) {
        const last = iov[iov.length - 1];
        if (libc.ptrValue(last[0]) + BigInt(last[1]) === addr) last[1] += PAGE_SIZE;
        else iov.push([libc.ptrOf(addr), PAGE_SIZE]);
      } else {
        flush();
        fileOff = fo;
        iov.push([libc.ptrOf(addr), PAGE_SIZE]);
      }
      runBytes += PAGE_SIZE;
    }
    flush();
    for (let k = 0; k < idx.length; k++) {
      const i = idx[k];
      if (this.pageFlags[i] & PAGE_FLAG.ZERO) continue;
      const off = dstOffsets ? dstOffsets[k] : this.gfns[i] * PAGE_SIZE;
      if (crc32(dst.subarray(off, off + PAGE_SIZE)) !== this.pageCrc[i]) {
        const at = this.chunks[this.pageChunk[i]].compressed
          ? this.chunks[this.pageChunk[i]].offset
          : this.pageOffset(i);
        throw new CheckpointFormatError(
          this.path,
          at,
          `page gfn ${this.gfns[i]} checksum mismatch (corrupt data)`,
        );
      }
    }
  }

  private inflate(c: number): Uint8Array {
    const ch = this.chunks[c];
    const z = readAt(this.path, this.fd, ch.offset, ch.len);
    if (crc32(z) !== ch.crc) {
      throw new CheckpointFormatError(this.path, ch.offset, `chunk ${c} checksum mismatch`);
    }
    let raw: Uint8Array;
    try {
      raw = new Uint8Array(zlib.zstdDecompressSync(z));
    } catch (e) {
      throw new CheckpointFormatError(
        this.path,
        ch.offset,
        `chunk ${c} does not decompress: ${(e as Error).message}`,
      );
    }
    if (raw.length !== ch.pages * PAGE_SIZE) {
      throw new CheckpointFormatError(
        this.path,
        ch.offset,
        `chunk ${c} inflates to ${raw.length} bytes, not ${ch.pages} pages`,
      );
    }
    return raw;
  }

  /**
   * Checks every compressed chunk's CRC-32 and that it inflates. Uncompressed chunks carry no chunk
   * CRC (a live checkpoint may hold superseded copies that changed while written); their pages are
   * checked one by one by `readInto`.
   */
  verifyChunks(): void {
    for (let c = 0; c < this.chunks.length; c++) if (this.chunks[c].compressed) this.inflate(c);
  }

  #closed = false;

  /** Closes the file; once, so a descriptor number reused since is never closed under its owner. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    libc.close(this.fd);
  }
}

function readAt(path: string, fd: number, off: number, len: number): Uint8Array<ArrayBuffer> {
  const buf = new Uint8Array(len);
  const n = len === 0 ? 0 : libc.pread(fd, Deno.UnsafePointer.of(buf), len, off);
  if (n !== len) {
    throw new CheckpointFormatError(path, off + n, `short read (${n} of ${len} bytes): truncated`);
  }
  return buf;
}
