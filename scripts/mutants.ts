/**
 * The catalogue of `deno task mutate` (scripts/mutate.ts): single-point mutations of the
 * consistency core (docs/CONSISTENCY.md), written by hand as a careful reviewer would try them, and
 * the test files that must kill them. Each `find` must occur exactly once in its file: the runner
 * refuses the catalogue otherwise, so an edit of the source cannot make an entry silently vanish.
 * The entries are kept one file per source under scripts/mutants/.
 *
 * `equivalent` is for a mutant no test can observe, with the argument; it is listed and left out of
 * the score, and a run in which the tests kill it is refused. `survives` records why the tests let
 * a mutant live today (what they would need to kill it); it does not change the score.
 */
import { LEDGER_MUTANTS } from "./mutants/save_ledger.ts";
import { SAVER_MUTANTS } from "./mutants/sub_saver.ts";
import { OWNERSHIP_MUTANTS } from "./mutants/ownership.ts";
import { DRIVER_MUTANTS } from "./mutants/split_driver.ts";

/** One single-point mutation of a source file. */
export interface Mutant {
  /** Stable name, unique in the catalogue (no commas: `--only` splits on them). */
  id: string;
  /** Path from the project root. */
  file: string;
  /** Source text replaced; it must occur exactly once in `file`. */
  find: string;
  /** What replaces it. */
  replace: string;
  /** The bug the mutation plants, in one line. */
  description: string;
  /** Why no test can observe it; an equivalent mutant is listed but left out of the score. */
  equivalent?: string;
  /** Why the tests let it live, when that is known and accepted for now. */
  survives?: string;
}

/** Test files run against every mutant; those that do not exist yet are skipped. */
export const TEST_FILES: readonly string[] = [
  "tests/ckpt_consistency_model_test.ts",
  "tests/ckpt_split_simulation_test.ts",
  "tests/paging_ledger_units_test.ts",
];

/** Every mutant, in the order they are reported. */
export const MUTANTS: readonly Mutant[] = [
  ...LEDGER_MUTANTS,
  ...SAVER_MUTANTS,
  ...OWNERSHIP_MUTANTS,
  ...DRIVER_MUTANTS,
];
