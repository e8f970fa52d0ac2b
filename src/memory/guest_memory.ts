/** Guest RAM: one memfd mapped shared, so other processes and checkpoints can map the same pages. */
import * as libc from "../ffi/libc.ts";
import type { Persist } from "../vmm/persist.ts";

/** The unit of paging, dirty tracking and saving. */
export const PAGE_SIZE = 4096;

/** Guest memory cannot be had; says how much was asked and what is free. */
export class GuestMemoryError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "GuestMemoryError";
  }
}

/** What restoring guest memory needs besides its contents. */
export interface GuestMemoryState {
  /** Bytes of guest RAM. */
  size: number;
}

/** Bytes the kernel says can be allocated without swapping (MemAvailable). */
export function hostAvailableMemory(): number {
  return Deno.systemMemoryInfo().available;
}

/** Guest RAM backed by a memfd, mapped shared into this process. */
export class GuestMemory implements Persist<GuestMemoryState> {
  private constructor(
    /** The memfd. */
    readonly fd: number,
    /** Size in bytes. */
    readonly size: number,
    /** Host address of guest physical address 0. */
    readonly ptr: Deno.PointerObject,
  ) {}

  /** Allocates `size` bytes (a multiple of 4 KiB) of zeroed guest RAM. */
  static create(size: number, name = "dcres-guest"): GuestMemory {
    if (!Number.isSafeInteger(size) || size <= 0 || size % PAGE_SIZE !== 0) {
      throw new GuestMemoryError(`guest memory size ${size} must be a positive multiple of 4 KiB`);
    }
    const avail = hostAvailableMemory();
    if (size > avail) {
      throw new GuestMemoryError(
        `guest memory of ${fmtMiB(size)} exceeds the host's available ${
          fmtMiB(avail)
        }; use a smaller --mem`,
      );
    }
    const fd = libc.memfdCreate(name);
    libc.ftruncate(fd, size);
    const ptr = libc.mmap(
      size,
      libc.MAP.PROT_READ | libc.MAP.PROT_WRITE,
      libc.MAP.SHARED | libc.MAP.NORESERVE,
      fd,
    );
    return new GuestMemory(fd, size, ptr);
  }

  /** Builds guest memory from saved state; contents come from the caller (a checkpoint). */
  static restore(args: { name?: string }, state: GuestMemoryState): GuestMemory {
    return GuestMemory.create(state.size, args.name);
  }

  /** Host address of guest physical address 0, as a number for ioctls. */
  get hostAddr(): bigint {
    return libc.ptrValue(this.ptr);
  }

  /** Number of 4 KiB pages. */
  get pages(): number {
    return this.size / PAGE_SIZE;
  }

  /** A live view of [gpa, gpa+length) (no copy). */
  view(gpa = 0, length = this.size - gpa): Uint8Array<ArrayBuffer> {
    if (gpa < 0 || gpa + length > this.size) {
      throw new RangeError(`guest range 0x${gpa.toString(16)}+${length} is outside guest memory`);
    }
    return libc.bytesAt(libc.ptrAdd(this.ptr, gpa), length);
  }

  /** A live 64-bit view of [gpa, gpa+8*count). */
  u64(gpa: number, count: number): BigUint64Array<ArrayBuffer> {
    const v = this.view(gpa, count * 8);
    return new BigUint64Array(v.buffer, v.byteOffset, count);
  }

  /** The state needed to recreate this memory (its contents are saved by the checkpoint layer). */
  save(): GuestMemoryState {
    return { size: this.size };
  }

  /** Unmaps and closes. */
  close(): void {
    libc.munmap(this.ptr, this.size);
    libc.close(this.fd);
  }
}

/** `n` bytes as MiB with no decimals, for messages. */
export function fmtMiB(n: number): string {
  return `${Math.round(n / (1 << 20))} MiB`;
}
