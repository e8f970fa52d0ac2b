/** The checkpoint operation of a running machine's control socket. */
import type { DirtyTracker } from "../memory/dirty_tracker.ts";
import { RpcError } from "../rpc/errors.ts";
import type { ExtraHandler } from "../vmm/control/server.ts";
import type { Machine } from "../vmm/machine.ts";
import { CHECKPOINT_MODES, type CheckpointMode, isCheckpointMode } from "./manifest.ts";
import { type HostCopies, takeCheckpoint } from "./save.ts";
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
  /**
   * Copies of every fragment on distinct hosts (absent: 2 where there are two hosts or more, a
   * split VM's or a one-host VM's with peers, else 1).
   */
  replicas?: number;
  /** The address of the agent of the host taking it, where other hosts send copies. */
  self?: string;
  /** The agent's peers that answered (a one-host VM's copies go to some of them); absent: none configured. */
  peers?: PeerInfo[];
  /** This host's zone label. */
  zone?: string;
  /** The identity the VMM reaches copy holders with (the agent's). */
  identityDir?: string;
  /** Generations the store keeps once it commits (retention.ts); absent: every one. */
  keep?: number;
}

/** An agent among this one's peers, as it described itself (`health`). */
export interface PeerInfo {
  /** Its name, from its certificate. */
  host: string;
  /** Its address. */
  addr: string;
  /** Its zone label, if it has one. */
  zone?: string;
  /** Bytes free on its store's disk. */
  freeBytes: number;
}

/**
 * Takes a checkpoint: `local` is the one-host checkpoint of this machine, its fragment copied by
 * `copies` when given.
 */
export type CheckpointRunner = (
  r: CheckpointRequest,
  opts: CheckpointOptions,
  local: (copies?: HostCopies) => Promise<CheckpointReport>,
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
      if (busy) {
        throw new RpcError("busy", `a checkpoint of ${m.spec.name} is already in progress`);
      }
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
        return await run(r, opts, async (copies) => {
          const rep = await takeCheckpoint(m, tracker, opts, copies);
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
