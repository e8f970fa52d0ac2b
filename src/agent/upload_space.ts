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
    if (this.quotaBytes !== undefined) {
      const used = bytesUnder(this.root) + this.#reserved;
      if (used + bytes > this.quotaBytes) {
        throw new RpcError(
          "bad-request",
          `${file}: ${bytes} bytes would exceed the agent's store quota (${used} of ${this.quotaBytes} bytes used)`,
        );
      }
    }
    this.#reserved += bytes;
    let held = true;
    return () => {
      if (held) this.#reserved -= bytes;
      held = false;
    };
  }
}
