/** `dcres checkpoint NAME --out DIR`: checkpoint a running VM into a store directory. */
import { resolve } from "node:path";
import { request } from "../vmm/control/client.ts";
import { agentAddr, remoteCall } from "./remote.ts";
import type { CheckpointReport } from "../ckpt/transaction.ts";
import type { SplitCheckpointReport } from "../paging/split_checkpoint.ts";
import { CHECKPOINT_MODES, isCheckpointMode } from "../ckpt/manifest.ts";
import { EXIT, type GlobalOptions, report, stateDirOf } from "./context.ts";
import { fmtBytes, parseDuration, UsageError } from "./units.ts";
import { progressBar } from "./progress.ts";
import { gcLines, keepFlag } from "./gc.ts";

/** Flags of `dcres checkpoint`. */
export interface CheckpointFlags {
  out?: string;
  mode: string;
  incremental?: boolean;
  compress?: string;
  maxDowntime: string;
  traditional?: boolean;
  replicas?: string;
  keep?: string;
}

/** Runs `dcres checkpoint`. */
export async function checkpointCommand(
  g: GlobalOptions,
  name: string,
  f: CheckpointFlags,
): Promise<number> {
  const mode = f.mode;
  if (!isCheckpointMode(mode)) {
    throw new UsageError(`--mode ${mode}: use one of: ${CHECKPOINT_MODES.join(", ")}`);
  }
  if (f.compress !== undefined && f.compress !== "zstd") {
    throw new UsageError(`--compress ${f.compress}: only zstd is supported`);
  }
  const maxDowntimeMs = parseDuration("--max-downtime", f.maxDowntime);
  const remote = agentAddr(g);
  if (!remote && !f.out) {
    throw new UsageError(
      "--out DIR is required (through --agent it defaults to the agent's store)",
    );
  }
  const replicas = f.replicas === undefined ? undefined : Number(f.replicas);
  if (
    replicas !== undefined && !(Number.isSafeInteger(replicas) && replicas >= 1 && replicas <= 16)
  ) {
    throw new UsageError(`--replicas ${f.replicas}: give a whole number of copies from 1 to 16`);
  }
  const keep = keepFlag(f.keep);
  const bar = progressBar(g, `checkpoint ${name}`);
  const args = {
    mode,
    incremental: !!f.incremental,
    compress: f.compress === "zstd",
    maxDowntimeMs,
    traditional: !!f.traditional,
    ...(replicas === undefined ? {} : { replicas }),
    ...(keep === undefined ? {} : { keep }),
  };
  const onProgress = (p: unknown) => {
    const q = p as { done: number; total: number };
    bar.update(q.done, q.total);
  };
  let r: CheckpointReport;
  try {
    r = remote
      ? await remoteCall<CheckpointReport>(
        g,
        "checkpoint",
        { name, dir: f.out, ...args },
        onProgress,
      )
      : await request<CheckpointReport>(stateDirOf(g), name, {
        op: "checkpoint",
        dir: resolve(f.out!),
        ...args,
      }, onProgress);
  } finally {
    bar.stop();
  }
  report(g, {
    checkpoint: r.id,
    path: `${r.dir}/g${String(r.generation).padStart(6, "0")}`,
    ...r,
    downtimeMs: r.stats.downtimeMs,
  }, () => {
    const s = r.stats;
    const split = "pagesSentToSave" in r ? r as SplitCheckpointReport : undefined;
    return [
      `checkpoint of ${name}: generation ${r.generation} in ${r.dir} (${r.mode}${
        r.parent ? `, incremental on ${r.parent}` : ", full"
      })`,
      `  saved ${s.pagesSaved} pages (${
        fmtBytes(s.bytesWritten)
      }), ${s.zeroPages} zero, ${s.pagesReused} reused, ${s.pagesSavedTwice} saved twice`,
      `  ${s.rounds} round(s), downtime ${s.downtimeMs.toFixed(1)} ms, total ${
        s.totalMs.toFixed(0)
      } ms (${(s.bytesWritten / (1 << 20) / (s.totalMs / 1000)).toFixed(0)} MiB/s)`,
      ...(split
        ? [
          `  id ${r.id}; pages saved per host: ${
            Object.entries(split.pagesSaved).map(([h, n]) => `${h} ${n}`).join(", ")
          }; ${split.pagesSentToSave} sent over the network to be saved`,
        ]
        : []),
      ...(r.retention
        ? gcLines([{ store: name, ...r.retention }]).map((l) => `  retention: ${l}`)
        : []),
    ].join("\n");
  });
  return EXIT.OK;
}
