/** Checkpoint files moved between agents on request: the holder pushes, the target keeps. */
import type { AgentCalls } from "./agent_calls.ts";
import { RpcError } from "../rpc/errors.ts";
import { sleep } from "../rpc/deadline.ts";

/** Attempts at one file before a restore gives up: each resumes from what arrived. */
const PUSH_ATTEMPTS = 3;
/** The wait, and the most waits, while the target writes the same file by another call. */
const BUSY_WAIT_MS = 250, BUSY_WAITS = 240;

/**
 * Has agent `from` push `file` of `store` to agent `to`, agent to agent (never through this
 * process), starting at `offset` (what `to` already kept of it); a push that breaks is resumed from
 * what `to` kept; `repair` marks a copy that replaces a lost or damaged one (`to` counts it).
 * Returns the bytes sent.
 */
export async function pushFile(
  calls: AgentCalls,
  from: string,
  to: string,
  store: string,
  file: string,
  offset: number,
  repair = false,
): Promise<number> {
  for (let attempt = 1, waits = 0;; attempt++) {
    try {
      const r = await calls.call<{ bytes: number }>(
        from,
        "ckpt.push",
        { store, file, to, offset, ...(repair ? { repair } : {}) },
        { deadlineMs: 3_600_000 },
      );
      return r.bytes;
    } catch (e) {
      // The target has it already (its own repair pulled it meanwhile): the copy is there.
      if (e instanceof RpcError && e.code === "exists") return 0;
      // The target is receiving it by another call (its own repair): that one may bring it whole.
      if (e instanceof RpcError && e.code === "busy" && waits++ < BUSY_WAITS) {
        attempt--;
        await sleep(BUSY_WAIT_MS);
      } else if (attempt >= PUSH_ATTEMPTS) {
        throw new Error(`copying ${store}/${file} from ${from} to ${to}: ${(e as Error).message}`);
      }
      const have = await calls.call<{ partial: Record<string, number> }>(
        to,
        "ckpt.have",
        { store, files: [file] },
      );
      offset = have.partial[file] ?? 0;
    }
  }
}
