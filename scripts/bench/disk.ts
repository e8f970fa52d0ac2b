/**
 * Disk references for the checkpoint benchmark: a raw sequential write + fdatasync of random bytes
 * (what the disk can do, measured in the same run), free-space checks and page-cache eviction.
 */

import * as libc from "../../src/ffi/libc.ts";

const MiB = 1 << 20;

/** Incompressible bytes: `n` bytes from the OS random generator. */
export function randomBytes(n: number): Uint8Array<ArrayBuffer> {
  const buf = new Uint8Array(n);
  const step = 65536; // getRandomValues' limit per call
  for (let i = 0; i < n; i += step) crypto.getRandomValues(buf.subarray(i, Math.min(n, i + step)));
  return buf;
}

/** Timing of one raw write. */
export interface RawWrite {
  /** File written. */
  path: string;
  /** Bytes written. */
  bytes: number;
  /** Chunk size of each write call. */
  chunkBytes: number;
  /** ms in write calls. */
  writeMs: number;
  /** ms in the final fdatasync. */
  syncMs: number;
  /** writeMs + syncMs (plus open/close). */
  totalMs: number;
  /** bytes / totalMs in MiB/s. */
  mibPerSec: number;
}

/**
 * Creates `path` (it must not exist), writes `bytes` bytes from `buf` (wrapping around it when it is
 * shorter) in `chunkBytes` writes, fdatasyncs and closes; times the whole.
 */
export function rawWrite(
  path: string,
  buf: Uint8Array<ArrayBuffer>,
  bytes: number,
  chunkBytes = 16 * MiB,
): RawWrite {
  const t0 = performance.now();
  const f = Deno.openSync(path, { write: true, createNew: true, mode: 0o600 });
  try {
    let done = 0;
    while (done < bytes) {
      const at = done % buf.length;
      const n = Math.min(chunkBytes, bytes - done, buf.length - at);
      done += f.writeSync(buf.subarray(at, at + n));
    }
    const t1 = performance.now();
    f.syncDataSync();
    const t2 = performance.now();
    f.close();
    const totalMs = performance.now() - t0;
    return {
      path,
      bytes,
      chunkBytes,
      writeMs: t1 - t0,
      syncMs: t2 - t1,
      totalMs,
      mibPerSec: bytes / MiB / (totalMs / 1000),
    };
  } catch (e) {
    try {
      f.close();
    } catch {
      // Already closed.
    }
    throw e;
  }
}

/** Timing of one raw sequential read. */
export interface RawRead {
  /** Bytes read. */
  bytes: number;
  /** Wall time. */
  totalMs: number;
  /** bytes / totalMs in MiB/s. */
  mibPerSec: number;
}

/** Reads `path` sequentially in `chunkBytes` reads into one reused buffer; times the whole. */
export function rawRead(path: string, chunkBytes = 16 * MiB): RawRead {
  const buf = new Uint8Array(chunkBytes);
  const t0 = performance.now();
  const f = Deno.openSync(path, { read: true });
  let bytes = 0;
  try {
    for (let n = f.readSync(buf); n !== null; n = f.readSync(buf)) bytes += n;
  } finally {
    f.close();
  }
  const totalMs = performance.now() - t0;
  return { bytes, totalMs, mibPerSec: bytes / MiB / (totalMs / 1000) };
}

/** Bytes available to an unprivileged user on the filesystem holding `dir` (from df). */
export function freeBytes(dir: string): number {
  const out = new Deno.Command("df", { args: ["-B1", "--output=avail", dir] }).outputSync();
  const text = new TextDecoder().decode(out.stdout).trim().split("\n");
  const n = Number(text[text.length - 1]);
  if (!out.success || !Number.isFinite(n)) {
    throw new Error(`df ${dir} failed: ${new TextDecoder().decode(out.stderr).trim()}`);
  }
  return n;
}

/** The filesystem device and mount point of `dir` (from df), for the report. */
export function filesystemOf(dir: string): string {
  const out = new Deno.Command("df", { args: ["--output=source,target", dir] }).outputSync();
  const text = new TextDecoder().decode(out.stdout).trim().split("\n");
  return (text[text.length - 1] ?? "?").trim().replace(/\s+/, " on ");
}

let fadvise:
  | Deno.DynamicLibrary<{
    posix_fadvise: { parameters: ["i32", "i64", "i64", "i32"]; result: "i32" };
  }>
  | undefined;

/** Drops `path`'s pages from the page cache (fdatasync, then POSIX_FADV_DONTNEED). */
export function evictFromPageCache(path: string): void {
  fadvise ??= Deno.dlopen("libc.so.6", {
    posix_fadvise: { parameters: ["i32", "i64", "i64", "i32"], result: "i32" },
  });
  const fd = libc.open(path, libc.O.RDONLY);
  try {
    libc.fdatasync(fd);
    const POSIX_FADV_DONTNEED = 4;
    const r = fadvise.symbols.posix_fadvise(fd, 0n, 0n, POSIX_FADV_DONTNEED);
    if (r !== 0) throw new Error(`posix_fadvise(${path}) failed: errno ${r}`);
  } finally {
    libc.close(fd);
  }
}

/** Total size of the regular files under `dir`. */
export function treeBytes(dir: string): number {
  let n = 0;
  for (const e of Deno.readDirSync(dir)) {
    const p = `${dir}/${e.name}`;
    if (e.isDirectory) n += treeBytes(p);
    else if (e.isFile) n += Deno.statSync(p).size;
  }
  return n;
}
