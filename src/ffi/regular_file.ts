/**
 * Opening files a peer may have planted: only a regular file is opened, never through a symlink, and
 * the open itself cannot block (a FIFO opened for reading waits for a writer forever, and with it the
 * whole agent). O_NONBLOCK makes the open return at once, O_NOFOLLOW refuses a symlink as the last
 * component, and the descriptor's own type is checked after the open, so a file swapped between a
 * check and the open is still caught.
 */
import * as libc from "./libc.ts";

/** A file that is not a regular file, or could not be opened; the message names the path. */
export class NotRegularFileError extends Error {
  constructor(readonly path: string, why: string) {
    super(`${path}: ${why}`);
    this.name = "NotRegularFileError";
  }
}

function kindOf(st: Deno.FileInfo): string {
  if (st.isSymlink) return "a symlink";
  if (st.isDirectory) return "a directory";
  if (st.isFifo) return "a FIFO";
  if (st.isSocket) return "a socket";
  if (st.isCharDevice || st.isBlockDevice) return "a device";
  return "not a regular file";
}

const TYPES: Record<number, string> = {
  0o010000: "a FIFO",
  0o020000: "a device",
  0o040000: "a directory",
  0o060000: "a device",
  0o120000: "a symlink",
  0o140000: "a socket",
};

/** Opens `path` read-only if it is a regular file; returns the fd and the file's size. */
export function openRegular(path: string): { fd: number; size: number } {
  let fd: number;
  try {
    fd = libc.open(path, libc.O.RDONLY | libc.O.NONBLOCK | libc.O.NOFOLLOW);
  } catch (e) {
    let why = (e as Error).message;
    try {
      const st = Deno.lstatSync(path);
      if (!st.isFile) why = `${kindOf(st)}, not a regular file`;
    } catch {
      // Gone or unreadable: open's own error says it.
    }
    throw new NotRegularFileError(path, `cannot open: ${why}`);
  }
  try {
    // The descriptor's own file, whatever the path names now.
    const st = libc.fstat(fd);
    if (st.type !== libc.S_IFREG) {
      throw new NotRegularFileError(
        path,
        `${TYPES[st.type] ?? "not a regular file"}, not a regular file`,
      );
    }
    return { fd, size: st.size };
  } catch (e) {
    libc.close(fd);
    throw e;
  }
}

/** The whole of regular file `path`, refused if longer than `maxBytes`. */
export function readRegular(path: string, maxBytes: number): Uint8Array<ArrayBuffer> {
  const { fd, size } = openRegular(path);
  try {
    if (size > maxBytes) {
      throw new NotRegularFileError(path, `${size} bytes, more than the ${maxBytes} allowed`);
    }
    const buf = new Uint8Array(size);
    let off = 0;
    while (off < size) {
      const n = libc.pread(fd, Deno.UnsafePointer.of(buf.subarray(off)), size - off, off);
      if (n <= 0) break;
      off += n;
    }
    return buf.subarray(0, off);
  } finally {
    libc.close(fd);
  }
}
