/**
 * The split checkpoint simulation in CI (tests/helpers/split_sim.ts): fixed seeds of every mode,
 * with failures off and on, each a chain of full and incremental checkpoints with merges, run
 * through the real driver against in-memory hosts under a seeded scheduler. `deno task simulate
 * --seeds N` runs more; a failing seed names itself and replays exactly.
 */
import { assert, assertEquals } from "./helpers/assert.ts";
import { addCounts, formatCounts, noCounts, simulate } from "./helpers/split_sim.ts";

/** Seeds per mode in CI, with failures off and on. */
const SEEDS = { off: 300, on: 700 };

for (const mode of ["stop", "precopy", "cow"] as const) {
  for (const failures of [false, true]) {
    const n = failures ? SEEDS.on : SEEDS.off;
    Deno.test(
      `simulation, ${mode}: chains of full and incremental checkpoints with merges restore the memory of their points ${
        failures ? "with messages, moves and writes failing" : "while paging goes on"
      }`,
      async () => {
        const total = noCounts();
        const first = failures ? 100_001 : 1;
        for (let seed = first; seed < first + n; seed++) {
          addCounts(total, (await simulate(seed, mode, failures)).counts);
        }
        console.log(`${mode}${failures ? " with failures" : ""}: ${formatCounts(total)}`);
        // The seeds must reach what they are for: commits, merges, moves, and with failures on,
        // aborts and failed moves among them.
        assert(total.committed > total.aborted && total.merges > 0 && total.pageOuts > 0, "mix");
        if (failures) assert(total.aborted > 0 && total.failedMoves > 0, "no failures happened");
      },
    );
  }
}

Deno.test("simulation: a seed replays exactly (same course, same counts)", async () => {
  for (const mode of ["stop", "precopy", "cow"] as const) {
    const a = await simulate(4242, mode, true), b = await simulate(4242, mode, true);
    assertEquals(a, b);
  }
});
