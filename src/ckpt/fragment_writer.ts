/**
 * Writes one fragment: pages go to disk in large sequential pwritev calls straight from the memory
 * they live in (guest RAM or a copy-on-write staging buffer; O_DIRECT where the filesystem allows, so
 * no copy through the page cache either), zero pages are recorded but not stored, and each page's
 * CRC-32 lands in the index written at the end. One chunk is written on a helper thread while the
 * next is checksummed.
 */
import zlib from "node:zlib";
import * as libc from "../ffi/libc.ts";
import { crc32, FRAGMENT_VERSION } from "./format.ts";
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
import { PAGE_SIZE } from "../accel/accel.ts";
import type { FragmentSink } from "./fragment_sink.ts";

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
  gfns: Float64Array;
}

/** Options of a new fragment. */
export interface FragmentOptions {
  /** Checkpoint id (16 bytes). */
  checkpointId: Uint8Array;
  /** Checkpoint generation. */
  generation: number;
  /** zstd-compress each chunk. */
  compress?: boolean;
  /** A replica the file is copied to as it is written. */
  sink?: FragmentSink;
}

const MAX_IOV = 1024;
const MAX_CHUNK_BYTES = 16 << 20;
const O_DIRECT = 0o40000;

/** A growable column of numbers. */
class Column {
  data: Float64Array = new Float64Array(1024);
  length = 0;
  push(v: number) {
    if (this.length === this.data.length) {
      const next = new Float64Array(this.data.length * 2);
      next.set(this.data);
      this.data = next;
    }
    this.data[this.length++] = v;
  }
}

/** Builds a fragment file; `finish` makes it durable, `abort` removes it. */
export class FragmentWriter {
  private offset = HEADER_SIZE;
  private iovAddr: number[] = [];
  private iovLen: number[] = [];
  private chunkBytes = 0;
  private chunkPages = 0;
  private staged: Uint8Array[] = [];
  private inflight?: Promise<unknown>;
  private readonly chunks: Array<
    { offset: number; len: number; pages: number; flags: number; crc: number }
  > = [];
  private readonly gfn = new Column();
  private readonly chunk = new Column();
  private readonly slot = new Column();
  private readonly crc = new Column();
  private closed = false;
  /** Buffers the pending chunk's pages are in, kept alive until it is written. */
  private sources: Uint8Array[] = [];
  /** The pending chunk's pages, in file order, for the replica (uncompressed chunks). */
  private replicaPages: Uint8Array[] = [];
  /** The header, until the replica has been sent it. */
  private header?: Uint8Array;

  private constructor(
    readonly path: string,
    private readonly fd: number,
    private readonly directFd: number,
    private readonly compress: boolean,
    private readonly sink?: FragmentSink,
  ) {}

  /** Creates the file (it must not exist) and writes its header. */
  static create(path: string, opts: FragmentOptions): FragmentWriter {
    const fd = libc.open(path, libc.O.WRONLY | libc.O.CREAT | libc.O.EXCL, 0o600);
    let direct = -1;
    if (!opts.compress) {
      try {
        direct = libc.open(path, libc.O.WRONLY | O_DIRECT);
      } catch {
        direct = -1; // The filesystem has no O_DIRECT (tmpfs): buffered writes.
      }
    }
    const w = new FragmentWriter(path, fd, direct, !!opts.compress, opts.sink);
    const header = new Uint8Array(HEADER_SIZE);
    header.set(fragmentHeader.encode({
      magic: [...FRAGMENT_MAGIC],
      ...FRAGMENT_VERSION,
      header_size: HEADER_SIZE,
      page_size: PAGE_SIZE,
      checkpoint_id: [...opts.checkpointId],
      generation: BigInt(opts.generation),
      flags: opts.compress ? FRAGMENT_FLAG.ZSTD : 0,
    }));
    new DataView(header.buffer).setUint32(
      HEADER_CRC_OFFSET,
      crc32(header.subarray(0, HEADER_CRC_OFFSET)),
      true,
    );
    writeAll(fd, [[Deno.UnsafePointer.of(header), HEADER_SIZE]], 0);
    // The replica gets the header with the first chunk: a copy is opened only once the
    // checkpoint's every participant has begun, so none clears another's copy at its begin.
    w.header = header;
    return w;
  }

  /** Bytes of page data handed to the writer so far. */
  get bytesWritten(): number {
    return this.offset - HEADER_SIZE + this.chunkBytes;
  }

  /**
   * Appends pages `gfns[i]` whose bytes are at `src.bytes[offsets[i]]` (default gfn * 4096, i.e.
   * guest RAM). The bytes are checksummed now and written later; a copy that changes in between is
   * either superseded by a later copy of the same page (live modes re-save dirtied pages) or caught by
   * its CRC on restore, never silently restored.
   */
  async append(
    gfns: ArrayLike<number>,
    src: PageSource,
    offsets?: ArrayLike<number>,
  ): Promise<void> {
    const words = new Uint32Array(
      src.bytes.buffer,
      src.bytes.byteOffset,
      src.bytes.byteLength >>> 2,
    );
    const base = Number(src.base);
    for (let i = 0; i < gfns.length; i++) {
      const g = gfns[i];
      const off = offsets ? offsets[i] : g * PAGE_SIZE;
      if (isZero(words, off >>> 2)) {
        this.record(g, NO_CHUNK, 0, 0);
        continue;
      }
      // Checked before adding, and again after each wait: another append may fill the chunk while
      // this one waits, and one iovec more than MAX_IOV fails the whole write (EINVAL).
      while (this.iovAddr.length >= MAX_IOV || this.chunkBytes >= MAX_CHUNK_BYTES) {
        await this.submit();
      }
      const page = src.bytes.subarray(off, off + PAGE_SIZE);
      this.record(g, this.chunks.length, this.chunkPages, crc32(page));
      this.chunkPages++;
      this.chunkBytes += PAGE_SIZE;
      if (this.compress) {
        this.staged.push(page.slice());
      } else {
        if (this.sources[this.sources.length - 1] !== src.bytes) this.sources.push(src.bytes);
        if (this.sink) this.replicaPages.push(page);
        const addr = base + off;
        const n = this.iovAddr.length;
        if (n && this.iovAddr[n - 1] + this.iovLen[n - 1] === addr) this.iovLen[n - 1] += PAGE_SIZE;
        else {
          this.iovAddr.push(addr);
          this.iovLen.push(PAGE_SIZE);
        }
      }
    }
  }

  private record(g: number, chunk: number, slot: number, crc: number) {
    this.gfn.push(g);
    this.chunk.push(chunk);
    this.slot.push(slot);
    this.crc.push(crc);
  }

  /** Starts writing the pending chunk (waiting for the previous one first). */
  private async submit(): Promise<void> {
    await this.settle();
    // Two appends may wait here at once (a split VM's round and a page-out's save): the first to
    // resume submits every pending page, and the other finds nothing left and must not write an
    // empty chunk (which a reader refuses) nor replace the first one's write in `inflight`.
    if (this.chunkPages === 0) return;
    const offset = this.offset;
    let len: number, flags = 0, crc = 0;
    let write: Promise<unknown>;
    if (this.compress) {
      const raw = new Uint8Array(this.staged.length * PAGE_SIZE);
      this.staged.forEach((p, i) => raw.set(p, i * PAGE_SIZE));
      const z = new Uint8Array(zlib.zstdCompressSync(raw));
      len = z.length;
      crc = crc32(z);
      flags = CHUNK_FLAG.ZSTD;
      this.staged = [];
      write = writeAllAsync(this.fd, [[Deno.UnsafePointer.of(z), len]], offset, this.fd, z);
      if (this.sink) write = Promise.all([write, this.replicate(z)]);
    } else {
      len = this.chunkBytes;
      const aligned = this.directFd >= 0 && this.iovAddr.every((a) => a % PAGE_SIZE === 0);
      const iov = this.iovAddr.map((a, i) =>
        [libc.ptrOf(a), this.iovLen[i]] as [Deno.PointerValue, number]
      );
      this.iovAddr = [];
      this.iovLen = [];
      write = writeAllAsync(aligned ? this.directFd : this.fd, iov, offset, this.fd, this.sources);
      this.sources = [];
      if (this.sink) {
        // The replica gets the pages as they are now; a page that changes before the disk write
        // differs only in a record a later copy of the page supersedes, as on this host.
        const copy = new Uint8Array(len);
        this.replicaPages.forEach((p, i) => copy.set(p, i * PAGE_SIZE));
        this.replicaPages = [];
        write = Promise.all([write, this.replicate(copy)]);
      }
    }
    this.chunks.push({ offset, len, pages: this.chunkPages, flags, crc });
    this.offset += len;
    this.chunkPages = 0;
    this.chunkBytes = 0;
    this.inflight = write;
  }

  /** Sends the replica `bytes`, after the header if it has not had it yet. */
  private async replicate(bytes: Uint8Array): Promise<void> {
    const header = this.header;
    this.header = undefined;
    if (header) await this.sink!.write(header);
    await this.sink!.write(bytes);
  }

  /** Writes everything appended so far; after this the appended source bytes may change. */
  async flush(): Promise<void> {
    await this.submit();
    await this.settle();
  }

  /** Waits until no chunk write is under way, also one another append started meanwhile. */
  private async settle(): Promise<void> {
    for (let w = this.inflight; w; w = this.inflight) {
      await w;
      if (this.inflight === w) this.inflight = undefined;
    }
  }

  /** Writes index and footer, syncs, closes; returns what the fragment holds. */
  async finish(): Promise<FragmentSummary> {
    await this.flush();
    const n = this.gfn.length;
    const g = this.gfn.data;
    // Last copy of each page wins: stable sort of positions by gfn, keep the last of each run.
    const pos = new Uint32Array(n);
    for (let i = 0; i < n; i++) pos[i] = i;
    pos.sort((a, b) => g[a] - g[b] || a - b);
    const keep: number[] = [];
    for (let k = 0; k < n; k++) if (k === n - 1 || g[pos[k + 1]] !== g[pos[k]]) keep.push(pos[k]);
    const index = new Uint8Array(
      this.chunks.length * chunkEntry.size + keep.length * pageEntry.size,
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
    const gfns = new Float64Array(keep.length);
    keep.forEach((p, i) => {
      const isZero = this.chunk.data[p] === NO_CHUNK;
      if (isZero) zero++;
      gfns[i] = g[p];
      const at = base + i * pageEntry.size;
      dv.setBigUint64(at, BigInt(g[p]), true);
      dv.setUint32(at + 8, this.chunk.data[p], true);
      dv.setUint32(at + 12, this.slot.data[p], true);
      dv.setUint32(at + 16, this.crc.data[p], true);
      dv.setUint32(at + 20, isZero ? PAGE_FLAG.ZERO : 0, true);
    });
    const indexOffset = this.offset;
    writeAll(this.fd, [[Deno.UnsafePointer.of(index), index.length]], indexOffset);
    const footer = fragmentFooter.encode({
      magic: [...FOOTER_MAGIC],
      index_offset: BigInt(indexOffset),
      index_len: BigInt(index.length),
      chunks: this.chunks.length,
      pages: keep.length,
      zero_pages: zero,
      index_crc32: crc32(index),
      data_bytes: BigInt(indexOffset - HEADER_SIZE),
      footer_crc32: 0,
    });
    const footerCrc = crc32(footer.subarray(0, footer.length - 4));
    new DataView(footer.buffer).setUint32(footer.length - 4, footerCrc, true);
    writeAll(this.fd, [[Deno.UnsafePointer.of(footer), footer.length]], indexOffset + index.length);
    const replicated = this.sink && (async (sink: FragmentSink) => {
      await this.replicate(index);
      await sink.write(footer);
      await sink.finish();
    })(this.sink);
    try {
      libc.fdatasync(this.fd);
    } catch (e) {
      replicated?.catch(() => {}); // This host's failure is the one to report.
      throw e;
    }
    this.close();
    await replicated;
    return {
      path: this.path,
      pages: keep.length,
      zeroPages: zero,
      rewrites: n - keep.length,
      dataBytes: indexOffset - HEADER_SIZE,
      fileBytes: indexOffset + index.length + footer.length,
      footerCrc,
      gfns,
    };
  }

  private close() {
    if (this.closed) return;
    this.closed = true;
    libc.close(this.fd);
    if (this.directFd >= 0) libc.close(this.directFd);
  }

  /** Closes and removes the unfinished file. */
  async abort(): Promise<void> {
    try {
      await this.inflight;
    } catch {
      // The failed write is why we abort.
    }
    await this.sink?.abort();
    this.close();
    try {
      Deno.removeSync(this.path);
    } catch {
      // Already gone.
    }
  }
}

function isZero(words: Uint32Array, start: number): boolean {
  for (let i = start, end = start + PAGE_SIZE / 4; i < end; i++) if (words[i] !== 0) return false;
  return true;
}

/** pwritev until everything is written (short writes happen near ENOSPC and on signals). */
function writeAll(fd: number, iov: Array<[Deno.PointerValue, number]>, offset: number): void {
  let rest = iov.filter(([, n]) => n > 0);
  while (rest.length) {
    const n = libc.pwritev(fd, rest, offset);
    if (n === 0) throw new Error("pwritev wrote nothing (disk full?)");
    offset += n;
    rest = advance(rest, n);
  }
}

/**
 * Like writeAll on a helper thread. errno is per thread and lost there, so a failed write is redone
 * synchronously on `fallbackFd` (buffered), which either succeeds (O_DIRECT refused this buffer) or
 * fails with the real errno. `keep` holds the source buffer alive until the write completes.
 */
async function writeAllAsync(
  fd: number,
  iov: Array<[Deno.PointerValue, number]>,
  offset: number,
  fallbackFd: number,
  keep?: Uint8Array | Uint8Array[],
): Promise<void> {
  let rest = iov.filter(([, n]) => n > 0);
  try {
    while (rest.length) {
      const n = await libc.pwritevAsync(fd, rest, offset);
      if (n === 0) break;
      offset += n;
      rest = advance(rest, n);
    }
  } catch {
    // Retried below where errno is visible.
  }
  if (rest.length) writeAll(fallbackFd, rest, offset);
  void keep;
}

function advance(
  iov: Array<[Deno.PointerValue, number]>,
  n: number,
): Array<[Deno.PointerValue, number]> {
  let i = 0;
  while (i < iov.length && n >= iov[i][1]) n -= iov[i++][1];
  const rest = iov.slice(i);
  if (n > 0) rest[0] = [libc.ptrAdd(rest[0][0] as Deno.PointerObject, n), rest[0][1] - n];
  return rest;
}
