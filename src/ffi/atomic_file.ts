/**
 * Files that appear whole or not at all, and stay after a crash: written to a temporary file beside
 * the final path, fsynced, moved into place, and the directory fsynced. Errors of the system calls
 * are {@link SyscallError}s with their errno (a full disk is `Errno.ENOSPC`).
 */
import * as libc from "./libc.ts";

/** How {@link writeFileAtomic} and {@link placeFile} write and place a file. */
export interface AtomicWriteOptions {
  /** Permissions of a new file (before the umask); default 0o600. */
  mode?: number;
  /** The temporary file; default `PATH.tmp-` and a random suffix, created new. */
  tmp?: string;
  /** Renamed over an existing file (default), or, when false, refused if `path` exists. */
  replace?: boolean;
  /** The error to throw when `replace` is false and `path` exists. */
  exists?: () => Error;
}

/** Writes `data` to `path` atomically and durably: temporary file, fsync, rename, fsync of the directory. */
export function writeFileAtomic(
  path: string,
  data: Uint8Array,
  opts: AtomicWriteOptions = {},
): void {
  const tmp = opts.tmp ?? `${path}.tmp-${crypto.randomUUID().slice(0, 8)}`;
  const flags = libc.O.WRONLY | libc.O.CREAT | (opts.tmp ? libc.O.TRUNC : libc.O.EXCL);
  const fd = libc.open(tmp, flags, opts.mode ?? 0o600);
  try {
    try {
      const at = Deno.UnsafePointer.of(data as Uint8Array<ArrayBuffer>);
      for (let off = 0; off < data.length;) {
        off += libc.pwrite(fd, libc.ptrAdd(at!, off), data.length - off, off);
      }
      libc.fsync(fd);
    } finally {
      libc.close(fd);
    }
  } catch (e) {
    removeQuietly(tmp);
    throw e;
  }
  placeFile(tmp, path, opts);
}

/**
 * Puts `tmp`, already written and fsynced, at `path` and makes that durable: renamed over `path`
 * (or, with `replace: false`, linked there and refused if `path` exists), then the directory
 * fsynced. `tmp` is gone afterwards, also when this fails.
 */
export function placeFile(tmp: string, path: string, opts: AtomicWriteOptions = {}): void {
  try {
    if (opts.replace ?? true) {
      Deno.renameSync(tmp, path);
    } else {
      try {
        Deno.linkSync(tmp, path);
      } catch (e) {
        if (e instanceof Deno.errors.AlreadyExists && opts.exists) throw opts.exists();
        throw e;
      }
      Deno.removeSync(tmp);
    }
  } catch (e) {
    removeQuietly(tmp);
    throw e;
  }
  fsyncDir(dirOf(path));
}

/** fsync(2) of a directory, making renames and new entries in it durable. */
export function fsyncDir(dir: string): void {
  const fd = libc.open(dir, libc.O.RDONLY | libc.O.DIRECTORY);
  try {
    libc.fsync(fd);
  } finally {
    libc.close(fd);
  }
}

function dirOf(path: string): string {
  const slash = path.lastIndexOf("/");
  return slash < 0 ? "." : slash === 0 ? "/" : path.slice(0, slash);
}

/** Removes `path`, if it is there. */
export function removeQuietly(path: string): void {
  try {
    Deno.removeSync(path);
  } catch {
    // Already moved into place, or never created.
  }
}
