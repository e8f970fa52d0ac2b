/** The checkpoint operation of a running machine's control socket. */
import type { DirtyTracker } from "../memory/dirty_tracker.ts";
import { RpcError } from "../rpc/errors.ts";
import type { ExtraHandler } from "../vmm/control/server.ts";
import type { Machine } from "../vmm/machine.ts";
import { CHECKPOINT_MODES, type CheckpointMode, isCheckpointMode } from "./manifest.ts";
import { takeCheckpoint } from "./save.ts";
import { keepArg, retainStore } from "./retention.ts";
import {
  CheckpointError,
  type CheckpointOptions,
  type CheckpointReport,
  DEFAULT_MAX_DOWNTIME_MS,
} from "./transaction.ts";

/** Request fields of `checkpoint`. */
export interface CheckpointRequest {
  /** Store directory (absolute). */
  dir: string;
  /** Mode. */
  mode: CheckpointMode;
  /** Only pages written since the previous checkpoint. */
  incremental: boolean;
  /** zstd. */
  compress: boolean;
  /** Precopy downtime target. */
  maxDowntimeMs: number;
  /** A split VM the traditional way: pause, pull every page to main, save it as one host. */
  traditional?: boolean;
  /** Name of the host taking it (names a split VM's main fragment). */
  host?: string;
  /** Copies of every fragment on distinct hosts (a split VM's; default 1). */
  replicas?: number;
  /** The address of the agent of the host taking it, where other hosts send copies. */
  self?: string;
  /** Generations the store keeps once it commits (retention.ts); absent: every one. */
  keep?: number;
}

/** Takes a checkpoint: `local` is the one-host checkpoint of this machine. */
export type CheckpointRunner = (
  r: CheckpointRequest,
  opts: CheckpointOptions,
  local: () => Promise<CheckpointReport>,
) => Promise<CheckpointReport>;

/**
 * Control handlers for `m`, whose dirty log `tracker` reads (its baselineId is the checkpoint the
 * memory was restored from, if any); `resident` resolves once all of its memory is loaded (a lazy
 * restore must finish before a checkpoint reads guest memory from this thread); `run` takes the
 * checkpoint (a split VM's is not the one-host one).
 */
export function checkpointHandlers(
  m: Machine,
  tracker: DirtyTracker,
  resident: Promise<unknown> = Promise.resolve(),
  run: CheckpointRunner = (_r, _o, local) => local(),
): Record<string, ExtraHandler> {
  let busy = false;
  return {
    checkpoint: async (req, ctx) => {
      const r = req as unknown as CheckpointRequest;
      if (typeof r.dir !== "string" || !r.dir.startsWith("/")) {
        throw new RpcError("bad-request", "checkpoint: dir must be an absolute path");
      }
      if (!isCheckpointMode(r.mode)) {
        throw new RpcError(
          "bad-request",
          `checkpoint: mode must be one of ${CHECKPOINT_MODES.join(", ")}`,
        );
      }
      try {
        keepArg(r.keep, "checkpoint: keep");
      } catch (e) {
        throw new RpcError("bad-request", (e as Error).message);
      }
      if (busy) throw new CheckpointError(`a checkpoint of ${m.spec.name} is already in progress`);
      if (m.vm.isStopped) throw new CheckpointError(`${m.spec.name} has stopped`);
      busy = true;
      let last = 0;
      try {
        await resident;
        const opts: CheckpointOptions = {
          dir: r.dir,
          mode: r.mode,
          incremental: !!r.incremental,
          compress: !!r.compress,
          maxDowntimeMs: Number(r.maxDowntimeMs) || DEFAULT_MAX_DOWNTIME_MS,
          onProgress: (done, total) => {
            const now = performance.now();
            if (now - last < 100 && done < total) return;
            last = now;
            ctx.progress({ done, total });
          },
        };
        return await run(r, opts, async () => {
          const rep = await takeCheckpoint(m, tracker, opts);
          if (r.keep === undefined) return rep;
          // Only once it committed: a failed checkpoint removes nothing.
          const kept = retainStore(opts.dir, r.keep);
          return {
            ...rep,
            retention: {
              kept: kept.kept,
              removed: { [r.host ?? "local"]: kept.removed },
              failed: {},
            },
          };
        });
      } finally {
        busy = false;
      }
    },
  };
}
