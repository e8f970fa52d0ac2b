/**
 * Writes one fragment: pages go to disk in large sequential pwritev calls straight from the memory
 * they live in (guest RAM or a copy-on-write staging buffer), zero pages are recorded but not stored,
 * and each page's CRC-32 lands in the index written at the end.
 */
import zlib from "node:zlib";
import * as libc from "../ffi/libc.ts";
import { crc32, FRAGMENT_VERSION, PAGE } from "./format.ts";
import {
  CHUNK_FLAG,
  chunkEntry,
  FOOTER_MAGIC,
  FRAGMENT_FLAG,
  FRAGMENT_MAGIC,
  fragmentFooter,
  fragmentHeader,
  HEADER_CRC_OFFSET,
  HEADER_SIZE,
  NO_CHUNK,
  PAGE_FLAG,
  pageEntry,
} from "./fragment_layout.ts";

/** Where pages are read from: a byte view and the host address of its first byte. */
export interface PageSource {
  /** The bytes (guest RAM view or staging buffer). */
  bytes: Uint8Array<ArrayBuffer>;
  /** Host address of `bytes[0]`, for pwritev. */
  base: bigint;
}

/** What a finished fragment holds. */
export interface FragmentSummary {
  /** File path. */
  path: string;
  /** Distinct pages indexed (stored + zero). */
  pages: number;
  /** Of those, zero pages (recorded, not stored). */
  zeroPages: number;
  /** Page copies written more than once (a later copy superseded an earlier one). */
  rewrites: number;
  /** Page bytes written (compressed size with zstd). */
  dataBytes: number;
  /** Whole file size. */
  fileBytes: number;
  /** CRC-32 of the footer, which the manifest records to bind the fragment. */
  footerCrc: number;
  /** The gfns indexed, ascending. */
  gfns: number[];
}

/** Options of a new fragment. */
export interface FragmentOptions {
  /** Checkpoint id (16 bytes). */
  checkpointId: Uint8Array;
  /** Checkpoint generation. */
  generation: number;
  /** zstd-compress each chunk. */
  compress?: boolean;
}

const MAX_IOV = 1024;
const MAX_CHUNK_BYTES = 16 << 20;

/** Builds a fragment file; `finish` makes it durable, `abort` removes it. */
export class FragmentWriter {
  private offset = HEADER_SIZE;
  private iov: Array<[Deno.PointerValue, number]> = [];
  private iovBytes = 0;
  private chunkPages = 0;
  private chunkCrc = 0;
  private staged: Uint8Array[] = [];
  private readonly chunks: Array<
    { offset: number; len: number; pages: number; flags: number; crc: number }
  > = [];
  private readonly pageGfn: number[] = [];
  private readonly pageChunk: number[] = [];
  private readonly pageSlot: number[] = [];
  private readonly pageCrc: number[] = [];
  private readonly pageFlags: number[] = [];
  private closed = false;

  private constructor(
    readonly path: string,
    private readonly fd: number,
    private readonly compress: boolean,
  ) {}

  /** Creates the file (it must not exist) and writes its header. */
  static create(path: string, opts: FragmentOptions): FragmentWriter {
    const fd = libc.open(path, libc.O.WRONLY | libc.O.CREAT | libc.O.EXCL, 0o600);
    const w = new FragmentWriter(path, fd, !!opts.compress);
    const header = new Uint8Array(HEADER_SIZE);
    header.set(fragmentHeader.encode({
      magic: [...FRAGMENT_MAGIC],
      ...FRAGMENT_VERSION,
      header_size: HEADER_SIZE,
      page_size: PAGE,
      checkpoint_id: [...opts.checkpointId],
      generation: BigInt(opts.generation),
      flags: opts.compress ? FRAGMENT_FLAG.ZSTD : 0,
    }));
    new DataView(header.buffer).setUint32(
      HEADER_CRC_OFFSET,
      crc32(header.subarray(0, HEADER_CRC_OFFSET)),
      true,
    );
    libc.pwrite(fd, Deno.UnsafePointer.of(header), HEADER_SIZE, 0);
    return w;
  }

  /** Bytes of page data written so far. */
  get bytesWritten(): number {
    return this.offset - HEADER_SIZE + this.iovBytes;
  }

  /**
   * Appends pages `gfns[i]` whose bytes are at `src.bytes[offsets[i]]` (default: gfn * 4096, i.e.
   * guest RAM). The bytes must not change until the next flush (`flush`, or `finish`).
   */
  append(gfns: ArrayLike<number>, src: PageSource, offsets?: ArrayLike<number>): void {
    const words = new Uint32Array(
      src.bytes.buffer,
      src.bytes.byteOffset,
      src.bytes.byteLength >>> 2,
    );
    for (let i = 0; i < gfns.length; i++) {
      const gfn = gfns[i];
      const off = offsets ? offsets[i] : gfn * PAGE;
      if (isZero(words, off >>> 2)) {
        this.record(gfn, NO_CHUNK, 0, 0, PAGE_FLAG.ZERO);
        continue;
      }
      const page = src.bytes.subarray(off, off + PAGE);
      const c = crc32(page);
      this.record(gfn, this.chunks.length, this.chunkPages, c, 0);
      this.chunkPages++;
      if (this.compress) {
        this.staged.push(page.slice());
      } else {
        this.chunkCrc = crc32(page, this.chunkCrc);
        const addr = src.base + BigInt(off);
        const last = this.iov[this.iov.length - 1];
        if (last && libc.ptrValue(last[0]) + BigInt(last[1]) === addr) last[1] += PAGE;
        else this.iov.push([libc.ptrOf(addr), PAGE]);
        this.iovBytes += PAGE;
      }
      if (
        this.iov.length >= MAX_IOV || this.iovBytes >= MAX_CHUNK_BYTES ||
        this.staged.length * PAGE >= MAX_CHUNK_BYTES
      ) {
        this.flush();
      }
    }
  }

  private record(gfn: number, chunk: number, slot: number, crc: number, flags: number) {
    this.pageGfn.push(gfn);
    this.pageChunk.push(chunk);
    this.pageSlot.push(slot);
    this.pageCrc.push(crc);
    this.pageFlags.push(flags);
  }

  /** Writes the pending chunk; after this the appended source bytes may change. */
  flush(): void {
    if (this.chunkPages === 0) return;
    let len: number;
    let flags = 0;
    let crc: number;
    if (this.compress) {
      const raw = new Uint8Array(this.staged.length * PAGE);
      this.staged.forEach((p, i) => raw.set(p, i * PAGE));
      const z = new Uint8Array(zlib.zstdCompressSync(raw));
      len = z.length;
      crc = crc32(z);
      flags = CHUNK_FLAG.ZSTD;
      writeAll(this.fd, [[Deno.UnsafePointer.of(z), len]], this.offset);
      this.staged = [];
    } else {
      len = this.iovBytes;
      crc = this.chunkCrc;
      writeAll(this.fd, this.iov, this.offset);
      this.iov = [];
      this.iovBytes = 0;
    }
    this.chunks.push({ offset: this.offset, len, pages: this.chunkPages, flags, crc });
    this.offset += len;
    this.chunkPages = 0;
    this.chunkCrc = 0;
  }

  /** Writes index and footer, syncs, closes; returns what the fragment holds. */
  finish(): FragmentSummary {
    this.flush();
    const last = new Map<number, number>();
    for (let i = 0; i < this.pageGfn.length; i++) last.set(this.pageGfn[i], i);
    const order = [...last.values()].sort((a, b) => this.pageGfn[a] - this.pageGfn[b]);
    const index = new Uint8Array(
      this.chunks.length * chunkEntry.size + order.length * pageEntry.size,
    );
    const dv = new DataView(index.buffer);
    this.chunks.forEach((c, i) =>
      chunkEntry.write(dv, i * chunkEntry.size, {
        offset: BigInt(c.offset),
        stored_len: c.len,
        pages: c.pages,
        flags: c.flags,
        crc32: c.crc,
      })
    );
    let zero = 0;
    const base = this.chunks.length * chunkEntry.size;
    order.forEach((p, i) => {
      if (this.pageFlags[p] & PAGE_FLAG.ZERO) zero++;
      pageEntry.write(dv, base + i * pageEntry.size, {
        gfn: BigInt(this.pageGfn[p]),
        chunk: this.pageChunk[p],
        slot: this.pageSlot[p],
        crc32: this.pageCrc[p],
        flags: this.pageFlags[p],
      });
    });
    const indexOffset = this.offset;
    writeAll(this.fd, [[Deno.UnsafePointer.of(index), index.length]], indexOffset);
    const footer = fragmentFooter.encode({
      magic: [...FOOTER_MAGIC],
      index_offset: BigInt(indexOffset),
      index_len: BigInt(index.length),
      chunks: this.chunks.length,
      pages: order.length,
      zero_pages: zero,
      index_crc32: crc32(index),
      data_bytes: BigInt(indexOffset - HEADER_SIZE),
      footer_crc32: 0,
    });
    const footerCrc = crc32(footer.subarray(0, footer.length - 4));
    new DataView(footer.buffer).setUint32(footer.length - 4, footerCrc, true);
    writeAll(this.fd, [[Deno.UnsafePointer.of(footer), footer.length]], indexOffset + index.length);
    libc.fdatasync(this.fd);
    libc.close(this.fd);
    this.closed = true;
    return {
      path: this.path,
      pages: order.length,
      zeroPages: zero,
      rewrites: this.pageGfn.length - order.length,
      dataBytes: indexOffset - HEADER_SIZE,
      fileBytes: indexOffset + index.length + footer.length,
      footerCrc,
      gfns: order.map((p) => this.pageGfn[p]),
    };
  }

  /** Closes and removes the unfinished file. */
  abort(): void {
    if (!this.closed) libc.close(this.fd);
    this.closed = true;
    try {
      Deno.removeSync(this.path);
    } catch {
      // Already gone.
    }
  }
}

function isZero(words: Uint32Array, start: number): boolean {
  for (let i = start, end = start + PAGE / 4; i < end; i++) if (words[i] !== 0) return false;
  return true;
}

/** pwritev until everything is written (short writes happen near ENOSPC and on signals). */
function writeAll(fd: number, iov: Array<[Deno.PointerValue, number]>, offset: number): void {
  let rest = iov.map(([p, n]) => [p, n] as [Deno.PointerValue, number]);
  while (rest.length) {
    let n = libc.pwritev(fd, rest, offset);
    if (n === 0) throw new Error("pwritev wrote nothing (disk full?)");
    offset += n;
    while (rest.length && n >= rest[0][1]) {
      n -= rest[0][1];
      rest = rest.slice(1);
    }
    if (n > 0) rest[0] = [libc.ptrAdd(rest[0][0] as Deno.PointerObject, n), rest[0][1] - n];
  }
}
