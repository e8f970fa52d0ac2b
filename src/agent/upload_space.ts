/**
 * Room for checkpoint uploads (`ckpt.put`), reserved before a byte is written: against the agent's
 * store quota, when its config sets one, and against the free space of the disk under the store
 * (statvfs), less what uploads under way have reserved and a margin kept for checkpoints this host
 * writes itself.
 */
import { bytesUnder } from "../ckpt/store.ts";
import { statvfs } from "../ffi/libc.ts";
import { RpcError } from "../rpc/errors.ts";

/** Free space an upload must leave, so a local checkpoint or a manifest commit still fits. */
export const FREE_SPACE_MARGIN = 256 << 20;

/**
 * Refuses, in one line, writing up to `bytes` more (for `what`, which names the host) into
 * checkpoint root `root` when that would pass `quotaBytes` (none: no quota); `reserved` is held
 * for writes already under way. Checked before the first byte is written.
 */
export function checkQuota(
  root: string,
  quotaBytes: number | undefined,
  what: string,
  bytes: number,
  reserved = 0,
): void {
  if (quotaBytes === undefined) return;
  const used = bytesUnder(root) + reserved;
  if (used + bytes > quotaBytes) {
    throw new RpcError(
      "bad-request",
      `${what}: ${bytes} bytes would exceed the agent's store quota (${used} of ${quotaBytes} bytes used); free room with 'dcres ckpt gc' or --keep, or raise storeQuotaBytes`,
    );
  }
}

/** Reservations of uploads under way in one checkpoint root. */
export class UploadSpace {
  #reserved = 0;

  constructor(private readonly root: string, private readonly quotaBytes?: number) {}

  /** Reserves `bytes` for `file`, or refuses in one line; returns the release. */
  reserve(file: string, bytes: number): () => void {
    const { availBytes } = statvfs(this.root);
    const free = availBytes - this.#reserved - FREE_SPACE_MARGIN;
    if (bytes > free) {
      throw new RpcError(
        "bad-request",
        `${file}: ${bytes} bytes do not fit: ${
          Math.max(0, free)
        } bytes free on the agent's store disk`,
      );
    }
    checkQuota(this.root, this.quotaBytes, file, bytes, this.#reserved);
    this.#reserved += bytes;
    let held = true;
    return () => {
      if (held) this.#reserved -= bytes;
      held = false;
    };
  }
}
