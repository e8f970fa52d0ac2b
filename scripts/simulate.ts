/**
 * `deno task simulate`: runs the split checkpoint simulation (tests/helpers/split_sim.ts) over many
 * seeds, or replays one with its whole trace. Exits 1 at the first failing seed, naming it.
 *
 *   deno task simulate --seeds 5000                  5000 seeds of each mode, failures off and on
 *   deno task simulate --seed 123 --mode cow --trace  replays one seed, printing what happened
 */
import { Command, InvalidArgumentError } from "commander";
import type { CheckpointMode } from "../src/ckpt/manifest.ts";
import { SimFailure } from "../tests/helpers/sim_scheduler.ts";
import { addCounts, formatCounts, noCounts, simulate } from "../tests/helpers/split_sim.ts";

const MODES: readonly CheckpointMode[] = ["stop", "precopy", "cow"];

function count(v: string): number {
  const n = Number(v);
  if (!Number.isSafeInteger(n) || n < 0) {
    throw new InvalidArgumentError("give a whole number of 0 or more");
  }
  return n;
}

const opts = new Command("simulate")
  .description("seeded simulation of split checkpoints: every mode, with failures off and on")
  .option("--seeds <n>", "seeds per mode and failure setting", count, 1000)
  .option("--from <seed>", "first seed", count, 1)
  .option("--seed <seed>", "replay this one seed only", count)
  .option("--mode <mode>", "stop, precopy, cow or all", "all")
  .option("--failures <on|off|both>", "inject failures", "both")
  .option("--trace", "keep and print the whole course of a failing (or replayed) seed")
  .parse(["deno", "simulate", ...Deno.args])
  .opts<{
    seeds: number;
    from: number;
    seed?: number;
    mode: string;
    failures: string;
    trace?: boolean;
  }>();

const modes = opts.mode === "all" ? MODES : MODES.filter((m) => m === opts.mode);
const fails = { on: [true], off: [false], both: [false, true] }[opts.failures];
if (!modes.length || !fails) {
  console.error(
    "dcres simulate: --mode is stop, precopy, cow or all; --failures is on, off or both",
  );
  Deno.exit(2);
}
const keep = opts.trace ? 1_000_000 : 120;
// A replayed seed with --trace prints its course as it goes; a failure then adds only its cause.
const log = opts.trace && opts.seed !== undefined ? (l: string) => console.log(l) : undefined;
const seeds = opts.seed !== undefined ? [opts.seed] : Array.from(
  { length: opts.seeds },
  (_, i) => opts.from + i,
);

for (const mode of modes) {
  for (const failures of fails) {
    const total = noCounts(), t0 = performance.now();
    for (const seed of seeds) {
      try {
        addCounts(
          total,
          (await simulate(seed, mode, failures, { traceLimit: log ? 0 : keep, log })).counts,
        );
      } catch (e) {
        if (!(e instanceof SimFailure)) throw e;
        console.error(`${mode}${failures ? " with failures" : ""}: ${e.message}`);
        Deno.exit(1);
      }
    }
    const secs = ((performance.now() - t0) / 1000).toFixed(1);
    console.log(`${mode}${failures ? " with failures" : ""}: ${formatCounts(total)} (${secs} s)`);
  }
}
