/** `dcres checkpoint NAME --out DIR`: checkpoint a running VM into a store directory. */
import { resolve } from "node:path";
import { request } from "../vmm/control/client.ts";
import type { CheckpointReport } from "../ckpt/save.ts";
import type { CheckpointMode } from "../ckpt/manifest.ts";
import { EXIT, type GlobalOptions, report, stateDirOf } from "./context.ts";
import { fmtBytes, parseDuration, UsageError } from "./units.ts";
import { progressBar } from "./progress.ts";

/** Flags of `dcres checkpoint`. */
export interface CheckpointFlags {
  out: string;
  mode: string;
  incremental?: boolean;
  compress?: string;
  maxDowntime: string;
}

const MODES = ["stop", "precopy", "cow"];

/** Runs `dcres checkpoint`. */
export async function checkpointCommand(
  g: GlobalOptions,
  name: string,
  f: CheckpointFlags,
): Promise<number> {
  if (!MODES.includes(f.mode)) {
    throw new UsageError(`--mode ${f.mode}: use one of: ${MODES.join(", ")}`);
  }
  if (f.compress !== undefined && f.compress !== "zstd") {
    throw new UsageError(`--compress ${f.compress}: only zstd is supported`);
  }
  const maxDowntimeMs = parseDuration("--max-downtime", f.maxDowntime);
  const dir = resolve(f.out);
  const bar = progressBar(g, `checkpoint ${name}`);
  let r: CheckpointReport;
  try {
    r = await request<CheckpointReport>(stateDirOf(g), name, {
      op: "checkpoint",
      dir,
      mode: f.mode as CheckpointMode,
      incremental: !!f.incremental,
      compress: f.compress === "zstd",
      maxDowntimeMs,
    }, (p) => bar.update(p.done, p.total));
  } finally {
    bar.stop();
  }
  report(g, {
    checkpoint: `${r.dir}/g${String(r.generation).padStart(6, "0")}`,
    ...r,
    downtimeMs: r.stats.downtimeMs,
  }, () => {
    const s = r.stats;
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
    ].join("\n");
  });
  return EXIT.OK;
}
