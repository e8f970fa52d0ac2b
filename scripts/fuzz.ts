/**
 * The long fuzz pass (`deno task fuzz`): the properties of tests/fuzz_test.ts with many more runs.
 * `--runs N` per property (default 5000), `--seed S` to replay a failure, `--only NAME` for one
 * decoder. Prints each property's runs and time; exits 1 on the first counterexample.
 */
import fc from "fast-check";
import { parseArgs } from "node:util";
import { properties, TARGETS } from "../tests/helpers/fuzz_targets.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: { runs: { type: "string" }, seed: { type: "string" }, only: { type: "string" } },
});
const runs = Number(values.runs ?? 5000);
const seed = values.seed === undefined ? Date.now() | 0 : Number(values.seed);
console.log(`fuzz: ${runs} runs per property, seed ${seed}`);
for (const t of TARGETS.filter((t) => !values.only || t.name === values.only)) {
  for (const [name, prop] of properties(t)) {
    const t0 = performance.now();
    const r = await fc.check(prop, { numRuns: runs, seed });
    const s = ((performance.now() - t0) / 1000).toFixed(1);
    if (r.failed) {
      console.error(
        `${name}: FAILED after ${r.numRuns} runs (seed ${seed}, path ${r.counterexamplePath})`,
      );
      console.error(String(r.errorInstance).split("\n")[0]);
      Deno.exit(1);
    }
    console.log(`${name}: ${r.numRuns} runs, ${s} s`);
  }
}
