/** Thin bindings to the libc calls the VMM needs; every failing call throws {@link SyscallError}. */
import { Errno, SyscallError } from "./errors.ts";

const lib = Deno.dlopen("libc.so.6", {
  open: { parameters: ["buffer", "i32", "u32"], result: "i32" },
  close: { parameters: ["i32"], result: "i32" },
  fstat: { parameters: ["i32", "buffer"], result: "i32" },
  ioctl_ptr: { name: "ioctl", parameters: ["i32", "u64", "pointer"], result: "i32" },
  ioctl_buf: { name: "ioctl", parameters: ["i32", "u64", "buffer"], result: "i32" },
  ioctl_int: { name: "ioctl", parameters: ["i32", "u64", "u64"], result: "i32" },
  mmap: {
    parameters: ["pointer", "usize", "i32", "i32", "i32", "i64"],
    result: "pointer",
  },
  munmap: { parameters: ["pointer", "usize"], result: "i32" },
  madvise: { parameters: ["pointer", "usize", "i32"], result: "i32" },
  memfd_create: { parameters: ["buffer", "u32"], result: "i32" },
  fallocate: { parameters: ["i32", "i32", "i64", "i64"], result: "i32" },
  ftruncate: { parameters: ["i32", "i64"], result: "i32" },
  lseek: { parameters: ["i32", "i64", "i32"], result: "i64" },
  pread: { parameters: ["i32", "pointer", "usize", "i64"], result: "isize" },
  pwrite: { parameters: ["i32", "pointer", "usize", "i64"], result: "isize" },
  pwritev: { parameters: ["i32", "buffer", "i32", "i64"], result: "isize" },
  pwritev_nb: {
    name: "pwritev",
    parameters: ["i32", "buffer", "i32", "i64"],
    result: "isize",
    nonblocking: true,
  },
  preadv: { parameters: ["i32", "buffer", "i32", "i64"], result: "isize" },
  fsync: { parameters: ["i32"], result: "i32" },
  fdatasync: { parameters: ["i32"], result: "i32" },
  read: { parameters: ["i32", "buffer", "usize"], result: "isize" },
  write: { parameters: ["i32", "buffer", "usize"], result: "isize" },
  eventfd: { parameters: ["u32", "i32"], result: "i32" },
  poll: { parameters: ["buffer", "u64", "i32"], result: "i32" },
  poll_nb: { name: "poll", parameters: ["buffer", "u64", "i32"], result: "i32", nonblocking: true },
  pthread_self: { parameters: [], result: "u64" },
  pthread_kill: { parameters: ["u64", "i32"], result: "i32" },
  syscall3: { name: "syscall", parameters: ["i64", "i64", "i64", "i64"], result: "i64" },
  __errno_location: { parameters: [], result: "pointer" },
  sysconf: { parameters: ["i32"], result: "i64" },
  getpid: { parameters: [], result: "i32" },
  gettid: { parameters: [], result: "i32" },
  clock_gettime: { parameters: ["i32", "buffer"], result: "i32" },
  memcpy: { parameters: ["pointer", "pointer", "usize"], result: "pointer" },
  statvfs: { parameters: ["buffer", "buffer"], result: "i32" },
  flock: { parameters: ["i32", "i32"], result: "i32" },
});

const s = lib.symbols;

/** The calling thread's current errno. */
export function errno(): number {
  const p = s.__errno_location();
  return new Deno.UnsafePointerView(p!).getInt32();
}

function check(call: string, ret: number | bigint): number {
  if (Number(ret) < 0) throw new SyscallError(call, errno());
  return Number(ret);
}

/** open(2) flags. */
export const O = {
  RDONLY: 0,
  WRONLY: 1,
  RDWR: 2,
  CREAT: 0o100,
  EXCL: 0o200,
  DIRECTORY: 0o200000,
  TRUNC: 0o1000,
  NONBLOCK: 0o4000,
  NOFOLLOW: 0o400000,
  CLOEXEC: 0o2000000,
} as const;

/** mmap(2) protections and flags. */
export const MAP = {
  PROT_NONE: 0,
  PROT_READ: 1,
  PROT_WRITE: 2,
  PROT_EXEC: 4,
  SHARED: 1,
  PRIVATE: 2,
  ANONYMOUS: 0x20,
  NORESERVE: 0x4000,
  POPULATE: 0x8000,
} as const;

/** madvise(2) advice values. */
export const MADV = { DONTNEED: 4, REMOVE: 9, WILLNEED: 3, POPULATE_WRITE: 23 } as const;

/** fallocate(2) modes. */
export const FALLOC = { KEEP_SIZE: 1, PUNCH_HOLE: 2 } as const;

/** Signal numbers. */
export const SIG = { USR1: 10, USR2: 12 } as const;

/** Encodes a JS string as a NUL-terminated C string. */
export function cstring(str: string): Uint8Array<ArrayBuffer> {
  const enc = new TextEncoder().encode(str);
  const out = new Uint8Array(enc.length + 1);
  out.set(enc);
  return out;
}

/** open(2). */
export function open(path: string, flags: number, mode = 0o600): number {
  const fd = s.open(cstring(path), flags | O.CLOEXEC, mode);
  if (fd < 0) throw new SyscallError(`open(${path})`, errno());
  return fd;
}

/** fstat(2) of `fd` (x86-64 struct stat): its file type bits (S_IFMT of st_mode) and size. */
export function fstat(fd: number): { type: number; size: number } {
  const st = new Uint8Array(144);
  check("fstat", s.fstat(fd, st));
  const dv = new DataView(st.buffer);
  return { type: dv.getUint32(24, true) & S_IFMT, size: Number(dv.getBigInt64(48, true)) };
}

/** File type bits of st_mode. */
export const S_IFMT = 0o170000;
/** st_mode type of a regular file. */
export const S_IFREG = 0o100000;

/** flock(2) operations. */
export const LOCK = { SH: 1, EX: 2, NB: 4 } as const;

/** flock(2) on `fd`; false when LOCK_NB was given and another holder has it. */
export function flock(fd: number, op: number): boolean {
  if (s.flock(fd, op) === 0) return true;
  const e = errno();
  if (e === Errno.EAGAIN && op & LOCK.NB) return false;
  throw new SyscallError("flock", e);
}

/** close(2); errors are ignored because there is nothing a caller can do about them. */
export function close(fd: number): void {
  s.close(fd);
}

/** ioctl(2) with a buffer argument the kernel reads and/or fills. */
export function ioctlBuf(
  fd: number,
  req: bigint,
  buf: Uint8Array<ArrayBuffer>,
  name: string,
): number {
  return check(`ioctl(${name})`, s.ioctl_buf(fd, req, buf));
}

/** ioctl(2) with an integer argument. */
export function ioctlInt(fd: number, req: bigint, arg: number | bigint, name: string): number {
  return check(`ioctl(${name})`, s.ioctl_int(fd, req, BigInt(arg)));
}

/** ioctl(2) that returns the raw result (negative errno) without throwing: for hot paths like KVM_RUN. */
export function ioctlRaw(fd: number, req: bigint, arg: bigint): number {
  const r = s.ioctl_int(fd, req, arg);
  return r < 0 ? -errno() : r;
}

/** mmap(2); returns the mapping's address. */
export function mmap(
  length: number,
  prot: number,
  flags: number,
  fd: number,
  offset = 0,
  addr: Deno.PointerValue = null,
): Deno.PointerObject {
  const p = s.mmap(addr, BigInt(length), prot, flags, fd, BigInt(offset));
  if (Deno.UnsafePointer.value(p) === 0xffffffffffffffffn || p === null) {
    throw new SyscallError("mmap", errno());
  }
  return p;
}

/** munmap(2). */
export function munmap(addr: Deno.PointerObject, length: number): void {
  check("munmap", s.munmap(addr, BigInt(length)));
}

/** madvise(2). */
export function madvise(addr: Deno.PointerObject, length: number, advice: number): void {
  check("madvise", s.madvise(addr, BigInt(length), advice));
}

/** memfd_create(2) with MFD_CLOEXEC. */
export function memfdCreate(name: string): number {
  return check("memfd_create", s.memfd_create(cstring(name), 1));
}

/** ftruncate(2). */
export function ftruncate(fd: number, length: number): void {
  check("ftruncate", s.ftruncate(fd, BigInt(length)));
}

/**
 * The runs of `fd` in [0, size) that hold data (lseek SEEK_DATA/SEEK_HOLE), as [offset, length]:
 * for a memfd, the pages that are present.
 */
export function dataRuns(fd: number, size: number): Array<[number, number]> {
  const SEEK_DATA = 3, SEEK_HOLE = 4;
  const out: Array<[number, number]> = [];
  for (let at = 0; at < size;) {
    const data = Number(s.lseek(fd, BigInt(at), SEEK_DATA));
    if (data < 0) {
      if (errno() === Errno.ENXIO) break;
      throw new SyscallError("lseek(SEEK_DATA)", errno());
    }
    const hole = Math.min(size, check("lseek(SEEK_HOLE)", s.lseek(fd, BigInt(data), SEEK_HOLE)));
    out.push([data, hole - data]);
    at = hole;
  }
  return out;
}

/** fallocate(2). */
export function fallocate(fd: number, mode: number, offset: number, length: number): void {
  check("fallocate", s.fallocate(fd, mode, BigInt(offset), BigInt(length)));
}

/** pread(2) into memory at `dst`; returns bytes read. */
export function pread(fd: number, dst: Deno.PointerValue, length: number, offset: number): number {
  return check("pread", s.pread(fd, dst, BigInt(length), BigInt(offset)));
}

/** pwrite(2) from memory at `src`; returns bytes written. */
export function pwrite(fd: number, src: Deno.PointerValue, length: number, offset: number): number {
  return check("pwrite", s.pwrite(fd, src, BigInt(length), BigInt(offset)));
}

/** pwritev(2) of (address, length) pairs; returns bytes written. */
export function pwritev(
  fd: number,
  iov: Array<[Deno.PointerValue, number]>,
  offset: number,
): number {
  return check("pwritev", s.pwritev(fd, iovecs(iov), iov.length, BigInt(offset)));
}

/** pwritev(2) on a helper thread, so the JS event loop keeps running; errno is lost there, so a failure says only that it failed. */
export async function pwritevAsync(
  fd: number,
  iov: Array<[Deno.PointerValue, number]>,
  offset: number,
): Promise<number> {
  const buf = iovecs(iov);
  const r = Number(await s.pwritev_nb(fd, buf, iov.length, BigInt(offset)));
  if (r < 0) throw new Error("pwritev failed on an I/O thread (errno not available there)");
  return r;
}

/** preadv(2) into (address, length) pairs; returns bytes read. */
export function preadv(
  fd: number,
  iov: Array<[Deno.PointerValue, number]>,
  offset: number,
): number {
  return check("preadv", s.preadv(fd, iovecs(iov), iov.length, BigInt(offset)));
}

function iovecs(iov: Array<[Deno.PointerValue, number]>): Uint8Array<ArrayBuffer> {
  const buf = new BigUint64Array(iov.length * 2);
  iov.forEach(([p, len], i) => {
    buf[2 * i] = p === null ? 0n : BigInt(Deno.UnsafePointer.value(p));
    buf[2 * i + 1] = BigInt(len);
  });
  return new Uint8Array(buf.buffer);
}

/** fsync(2). */
export function fsync(fd: number): void {
  check("fsync", s.fsync(fd));
}

/** fdatasync(2). */
export function fdatasync(fd: number): void {
  check("fdatasync", s.fdatasync(fd));
}

/** read(2) into a buffer; returns bytes read or -errno for EAGAIN. */
export function read(fd: number, buf: Uint8Array<ArrayBuffer>): number {
  const r = Number(s.read(fd, buf, BigInt(buf.length)));
  if (r < 0) {
    const e = errno();
    if (e === Errno.EAGAIN) return -e;
    throw new SyscallError("read", e);
  }
  return r;
}

/** write(2) of a buffer; returns bytes written. */
export function write(fd: number, buf: Uint8Array<ArrayBuffer>): number {
  return check("write", s.write(fd, buf, BigInt(buf.length)));
}

/** struct statvfs on x86_64 and aarch64 glibc: eleven unsigned longs, then six ints of padding. */
const STATVFS = { size: 112, frsize: 8, blocks: 16, bavail: 32 } as const;

/** statvfs(3) of the file system holding `path`: its size and the bytes an unprivileged writer may still use. */
export function statvfs(path: string): { totalBytes: number; availBytes: number } {
  const buf = new Uint8Array(STATVFS.size);
  check("statvfs", s.statvfs(cstring(path), buf));
  const v = new DataView(buf.buffer);
  const frsize = Number(v.getBigUint64(STATVFS.frsize, true));
  return {
    totalBytes: Number(v.getBigUint64(STATVFS.blocks, true)) * frsize,
    availBytes: Number(v.getBigUint64(STATVFS.bavail, true)) * frsize,
  };
}

/** eventfd(2) with EFD_CLOEXEC. */
export function eventfd(initval = 0, flags = 0): number {
  return check("eventfd", s.eventfd(initval, flags | 0o2000000));
}

/** poll(2) events. */
export const POLL = { IN: 1, OUT: 4, ERR: 8, HUP: 16 } as const;

/** poll(2) on fds; returns each fd's revents. Blocks the calling thread. */
export function poll(fds: Array<{ fd: number; events: number }>, timeoutMs: number): number[] {
  const buf = pollBuf(fds);
  check("poll", s.poll(buf, BigInt(fds.length), timeoutMs));
  return pollResult(buf, fds.length);
}

/** poll(2) on a helper thread, so the JS event loop stays free. */
export async function pollAsync(
  fds: Array<{ fd: number; events: number }>,
  timeoutMs: number,
): Promise<number[]> {
  const buf = pollBuf(fds);
  check("poll", await s.poll_nb(buf, BigInt(fds.length), timeoutMs));
  return pollResult(buf, fds.length);
}

function pollBuf(fds: Array<{ fd: number; events: number }>): Uint8Array<ArrayBuffer> {
  const buf = new Uint8Array(8 * fds.length);
  const dv = new DataView(buf.buffer);
  fds.forEach(({ fd, events }, i) => {
    dv.setInt32(8 * i, fd, true);
    dv.setInt16(8 * i + 4, events, true);
  });
  return buf;
}

function pollResult(buf: Uint8Array<ArrayBuffer>, n: number): number[] {
  const dv = new DataView(buf.buffer);
  return Array.from({ length: n }, (_, i) => dv.getInt16(8 * i + 6, true));
}

/** pthread_self(3) of the calling thread. */
export function pthreadSelf(): bigint {
  return s.pthread_self();
}

/** pthread_kill(3): deliver `sig` to one thread of this process. */
export function pthreadKill(thread: bigint, sig: number): void {
  const r = s.pthread_kill(thread, sig);
  if (r !== 0) throw new SyscallError("pthread_kill", r);
}

/** syscall(2) with up to three arguments; returns the raw result. */
export function syscall(nr: number, a = 0n, b = 0n, c = 0n): bigint {
  const r = s.syscall3(BigInt(nr), a, b, c);
  if (r < 0n) throw new SyscallError(`syscall(${nr})`, errno());
  return r;
}

/** memcpy(3) between raw addresses. */
export function memcpy(dst: Deno.PointerValue, src: Deno.PointerValue, n: number): void {
  s.memcpy(dst, src, BigInt(n));
}

/** CLOCK_BOOTTIME: monotonic, counts time suspended, and the same for every process of the host. */
const CLOCK_BOOTTIME = 7;

/**
 * The host's boot time clock in ms (clock_gettime(2), CLOCK_BOOTTIME): unlike `performance.now()`
 * it is one clock for every process, so a deadline one process sets another can check.
 */
export function bootTimeMs(): number {
  const ts = new BigInt64Array(2);
  const r = s.clock_gettime(CLOCK_BOOTTIME, new Uint8Array(ts.buffer));
  if (r !== 0) throw new SyscallError("clock_gettime", errno());
  return Number(ts[0]) * 1000 + Number(ts[1]) / 1e6;
}

/** gettid(2) of the calling thread. */
export function gettid(): number {
  return s.gettid();
}

/** The page size of the host. */
export const PAGE_SIZE = Number(s.sysconf(30));

/** Pointer at `addr + off`. */
export function ptrAdd(p: Deno.PointerObject, off: number | bigint): Deno.PointerObject {
  return Deno.UnsafePointer.offset(p, Number(off)) as Deno.PointerObject;
}

/** Address of a pointer as a bigint. */
export function ptrValue(p: Deno.PointerValue): bigint {
  return BigInt(Deno.UnsafePointer.value(p));
}

/** Pointer for an address. */
export function ptrOf(addr: bigint | number): Deno.PointerObject {
  return Deno.UnsafePointer.create(BigInt(addr)) as Deno.PointerObject;
}

/** A view of `length` bytes of native memory at `p` (no copy). */
export function bytesAt(p: Deno.PointerObject, length: number): Uint8Array<ArrayBuffer> {
  return new Uint8Array(Deno.UnsafePointerView.getArrayBuffer(p, length));
}
