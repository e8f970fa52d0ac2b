/** Errors raised by the system-call layer. */

const ERRNO_NAMES: Record<number, string> = {
  1: "EPERM",
  2: "ENOENT",
  4: "EINTR",
  5: "EIO",
  9: "EBADF",
  11: "EAGAIN",
  12: "ENOMEM",
  13: "EACCES",
  14: "EFAULT",
  16: "EBUSY",
  17: "EEXIST",
  19: "ENODEV",
  22: "EINVAL",
  25: "ENOTTY",
  28: "ENOSPC",
  38: "ENOSYS",
  95: "EOPNOTSUPP",
};

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

/** errno values the VMM reacts to. */
export const Errno = {
  EPERM: 1,
  ENOENT: 2,
  EINTR: 4,
  EAGAIN: 11,
  ENOMEM: 12,
  EACCES: 13,
  EEXIST: 17,
  EINVAL: 22,
  ENOSPC: 28,
} as const;
