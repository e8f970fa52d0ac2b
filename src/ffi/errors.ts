/** Errors raised by the system-call layer. */

/** The errno values dcres names, by name: the one table errnoName and every errno test use. */
export const Errno = {
  EPERM: 1,
  ENOENT: 2,
  EINTR: 4,
  EIO: 5,
  ENXIO: 6,
  EBADF: 9,
  EAGAIN: 11,
  ENOMEM: 12,
  EACCES: 13,
  EFAULT: 14,
  EBUSY: 16,
  EEXIST: 17,
  ENODEV: 19,
  EINVAL: 22,
  ENOTTY: 25,
  ENOSPC: 28,
  ENOSYS: 38,
  EOPNOTSUPP: 95,
} as const;

const ERRNO_NAMES: Record<number, string> = Object.fromEntries(
  Object.entries(Errno).map(([name, value]) => [value, name]),
);

/** Symbolic name of an errno value, e.g. `EINVAL`. */
export function errnoName(errno: number): string {
  return ERRNO_NAMES[errno] ?? `errno ${errno}`;
}

/** A system call or ioctl failed; carries the errno so callers can react to specific ones. */
export class SyscallError extends Error {
  /** The failing call, e.g. `ioctl(KVM_RUN)`. */
  readonly call: string;
  /** The raw errno. */
  readonly errno: number;
  constructor(call: string, errno: number, hint?: string) {
    super(`${call} failed: ${errnoName(errno)}${hint ? ` (${hint})` : ""}`);
    this.name = "SyscallError";
    this.call = call;
    this.errno = errno;
  }
}
