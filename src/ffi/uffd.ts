/** userfaultfd(2): the API handshake, registration, and the resolving ioctls (linux/userfaultfd.h). */
import { ior, iowr } from "./ioctl.ts";
import * as libc from "./libc.ts";
import { Errno, SyscallError } from "./errors.ts";
import { type Decoded, i64, pad, struct, u32, u64, u8 } from "./struct.ts";

const UFFDIO = 0xaa;
const SYS_userfaultfd = 323;

/** `struct uffdio_api`. */
export const uffdioApi = struct("uffdio_api", { api: u64, features: u64, ioctls: u64 });
/** `struct uffdio_range`. */
export const uffdioRange = struct("uffdio_range", { start: u64, len: u64 });
/** `struct uffdio_register`. */
export const uffdioRegister = struct("uffdio_register", {
  range: uffdioRange,
  mode: u64,
  ioctls: u64,
});
/** `struct uffdio_copy`. */
export const uffdioCopy = struct("uffdio_copy", {
  dst: u64,
  src: u64,
  len: u64,
  mode: u64,
  copy: i64,
});
/** `struct uffdio_zeropage`. */
export const uffdioZeropage = struct("uffdio_zeropage", {
  range: uffdioRange,
  mode: u64,
  zeropage: i64,
});
/** `struct uffdio_writeprotect`. */
export const uffdioWriteprotect = struct("uffdio_writeprotect", { range: uffdioRange, mode: u64 });
/** `struct uffd_msg` (pagefault arm of the union; other events decode their first fields the same way). */
export const uffdMsg = struct("uffd_msg", {
  event: u8,
  reserved1: pad(1),
  reserved2: pad(2, 2),
  reserved3: pad(4, 4),
  flags: u64,
  address: u64,
  ptid: u32,
  tail: pad(4, 4),
});
/** A decoded userfaultfd event. */
export type UffdMsg = Decoded<typeof uffdMsg>;

/** The ioctl numbers. */
export const UFFDIO_IOCTL = {
  API: iowr(UFFDIO, 0x3f, uffdioApi.size),
  REGISTER: iowr(UFFDIO, 0x00, uffdioRegister.size),
  UNREGISTER: ior(UFFDIO, 0x01, uffdioRange.size),
  WAKE: ior(UFFDIO, 0x02, uffdioRange.size),
  COPY: iowr(UFFDIO, 0x03, uffdioCopy.size),
  ZEROPAGE: iowr(UFFDIO, 0x04, uffdioZeropage.size),
  WRITEPROTECT: iowr(UFFDIO, 0x06, uffdioWriteprotect.size),
} as const;

/** Registration modes. */
export const REGISTER_MODE = { MISSING: 1n, WP: 2n, MINOR: 4n } as const;
/** UFFDIO_COPY / UFFDIO_ZEROPAGE mode bits. */
export const MODE = { DONTWAKE: 1n, WP: 2n } as const;
/** UFFDIO_WRITEPROTECT mode bits (not the same order as the copy modes). */
export const WP_MODE = { WP: 1n, DONTWAKE: 2n } as const;
/** Features requested at the handshake. */
export const FEATURE = {
  PAGEFAULT_FLAG_WP: 1n << 0n,
  EVENT_FORK: 1n << 1n,
  EVENT_REMAP: 1n << 2n,
  EVENT_REMOVE: 1n << 3n,
  MISSING_HUGETLBFS: 1n << 4n,
  MISSING_SHMEM: 1n << 5n,
  EVENT_UNMAP: 1n << 6n,
  SIGBUS: 1n << 7n,
  THREAD_ID: 1n << 8n,
  MINOR_HUGETLBFS: 1n << 9n,
  MINOR_SHMEM: 1n << 10n,
  EXACT_ADDRESS: 1n << 11n,
  WP_HUGETLBFS_SHMEM: 1n << 12n,
  WP_UNPOPULATED: 1n << 13n,
} as const;
/** `uffd_msg.event` values. */
export const EVENT = {
  PAGEFAULT: 0x12,
  FORK: 0x13,
  REMAP: 0x14,
  REMOVE: 0x15,
  UNMAP: 0x16,
} as const;
/** `uffd_msg.flags` for page faults. */
export const PAGEFAULT_FLAG = { WRITE: 1n, WP: 2n, MINOR: 4n } as const;

const UFFD_API = 0xaan;

/** A userfaultfd after the API handshake. */
export class Userfaultfd {
  private constructor(readonly fd: number, readonly features: bigint) {}

  /** Creates a userfaultfd (non-blocking, close-on-exec) and negotiates `features`. */
  static open(features: bigint = 0n): Userfaultfd {
    const O_NONBLOCK = 0o4000n;
    const O_CLOEXEC = 0o2000000n;
    const fd = Number(libc.syscall(SYS_userfaultfd, O_NONBLOCK | O_CLOEXEC));
    const buf = uffdioApi.encode({ api: UFFD_API, features, ioctls: 0n });
    try {
      libc.ioctlBuf(fd, UFFDIO_IOCTL.API, buf, "UFFDIO_API");
    } catch (e) {
      libc.close(fd);
      throw e;
    }
    return new Userfaultfd(fd, uffdioApi.decode(buf).features);
  }

  /** Registers [start, start+len) in `mode`; returns the ioctls allowed on the range. */
  register(start: bigint, len: number, mode: bigint): bigint {
    const buf = uffdioRegister.encode({ range: { start, len: BigInt(len) }, mode, ioctls: 0n });
    libc.ioctlBuf(this.fd, UFFDIO_IOCTL.REGISTER, buf, "UFFDIO_REGISTER");
    return uffdioRegister.decode(buf).ioctls;
  }

  /** Unregisters a range. */
  unregister(start: bigint, len: number): void {
    libc.ioctlBuf(
      this.fd,
      UFFDIO_IOCTL.UNREGISTER,
      uffdioRange.encode({ start, len: BigInt(len) }),
      "UFFDIO_UNREGISTER",
    );
  }

  /**
   * UFFDIO_COPY: atomically fills missing pages at `dst` from `src` and wakes the faulting threads;
   * 0 when part of the range is populated already.
   */
  copy(dst: bigint, src: bigint, len: number, mode = 0n): number {
    const buf = uffdioCopy.encode({ dst, src, len: BigInt(len), mode, copy: 0n });
    try {
      libc.ioctlBuf(this.fd, UFFDIO_IOCTL.COPY, buf, "UFFDIO_COPY");
    } catch (e) {
      if (e instanceof SyscallError && e.errno === Errno.EEXIST) return 0; // already populated
      throw e;
    }
    return Number(uffdioCopy.decode(buf).copy);
  }

  /** UFFDIO_ZEROPAGE: maps zero pages at a missing range; 0 when part of it is populated. */
  zeropage(start: bigint, len: number, mode = 0n): number {
    const buf = uffdioZeropage.encode({ range: { start, len: BigInt(len) }, mode, zeropage: 0n });
    try {
      libc.ioctlBuf(this.fd, UFFDIO_IOCTL.ZEROPAGE, buf, "UFFDIO_ZEROPAGE");
    } catch (e) {
      if (e instanceof SyscallError && e.errno === Errno.EEXIST) return 0;
      throw e;
    }
    return Number(uffdioZeropage.decode(buf).zeropage);
  }

  /** UFFDIO_WAKE: wakes threads waiting on a range. */
  wake(start: bigint, len: number): void {
    libc.ioctlBuf(
      this.fd,
      UFFDIO_IOCTL.WAKE,
      uffdioRange.encode({ start, len: BigInt(len) }),
      "UFFDIO_WAKE",
    );
  }

  /** UFFDIO_WRITEPROTECT: sets (`protect`) or clears write protection on a range. */
  writeProtect(start: bigint, len: number, protect: boolean, wake = true): void {
    const mode = (protect ? WP_MODE.WP : 0n) | (!protect && !wake ? WP_MODE.DONTWAKE : 0n);
    libc.ioctlBuf(
      this.fd,
      UFFDIO_IOCTL.WRITEPROTECT,
      uffdioWriteprotect.encode({ range: { start, len: BigInt(len) }, mode }),
      "UFFDIO_WRITEPROTECT",
    );
  }

  /** Reads pending events without blocking (the fd is non-blocking). */
  readEvents(max = 64): UffdMsg[] {
    const buf = new Uint8Array(uffdMsg.size * max);
    const n = libc.read(this.fd, buf);
    if (n <= 0) return [];
    const out: UffdMsg[] = [];
    for (let off = 0; off + uffdMsg.size <= n; off += uffdMsg.size) {
      out.push(uffdMsg.decode(buf.subarray(off, off + uffdMsg.size)));
    }
    return out;
  }

  /** Closes the fd. */
  close(): void {
    libc.close(this.fd);
  }

  /** Unregisters [start, start+len) and closes the fd; a range already unmapped is gone anyway. */
  teardown(start: bigint, len: number): void {
    try {
      this.unregister(start, len);
    } catch {
      // Memory already unmapped (the VM stopped).
    }
    this.close();
  }
}

/** How often one page's install is retried while the kernel answers EAGAIN (its mm is changing). */
const INSTALL_RETRIES = 100;

/**
 * Installs the pages of `run` (consecutive page numbers, page `p` at `base + p * pageSize`) with
 * `op(dst, len, indexInRun)` (UFFDIO_COPY or ZEROPAGE, which return 0 for "already there"). When
 * the whole run does not go in at once, each page goes in on its own: pages a racing fault or
 * install populated first (EEXIST) are skipped, and any other error is thrown, because a page
 * left absent would later fault in as a fresh zero page instead of its contents.
 */
export function installRun(
  base: bigint,
  pageSize: number,
  run: number[],
  op: (dst: bigint, len: number, at: number) => number,
): void {
  let done = 0;
  try {
    done = op(base + BigInt(run[0] * pageSize), run.length * pageSize, 0);
  } catch {
    // Installed page by page below, where an error is kept.
  }
  if (done === run.length * pageSize) return;
  run.forEach((p, i) => {
    for (let attempt = 0;; attempt++) {
      try {
        op(base + BigInt(p * pageSize), pageSize, i);
        return;
      } catch (e) {
        if (e instanceof SyscallError && e.errno === Errno.EAGAIN && attempt < INSTALL_RETRIES) {
          continue;
        }
        throw e;
      }
    }
  });
}
