/**
 * `deno task mutate`: mutation testing of the consistency core (docs/CONSISTENCY.md). The project
 * is copied once (others may be editing it meanwhile, and every mutant must meet the same tests);
 * each mutant of the catalogue (scripts/mutants.ts) is applied to its own copy of that snapshot
 * and the consistency tests run there, a mutant being killed when they fail or hang. Prints one
 * line per mutant, the score (killed / mutants not marked equivalent) and every survivor with the
 * reason it survives; exits 1 when the score is below `--min`, 2 when the run means nothing (the
 * catalogue no longer fits the sources, a mutated source does not load, an "equivalent" mutant is
 * killed, or the tests fail unmutated).
 */
import { Command, InvalidArgumentError } from "commander";
import { type Mutant, MUTANTS, TEST_FILES } from "./mutants.ts";
import { digest, pool, readSource, runTests, sandbox, type TestRun } from "./mutate_run.ts";

const ROOT = new URL("..", import.meta.url).pathname;
const NO_REASON = "no reason recorded: strengthen the tests or record why";

/** The catalogue does not fit the sources as they are (text missing or ambiguous, ids clash). */
export class CatalogueError extends Error {
  constructor(readonly problems: string[]) {
    super(`the mutant catalogue does not fit the sources:\n  ${problems.join("\n  ")}`);
    this.name = "CatalogueError";
  }
}

/** The tests fail before anything is mutated: no score would mean anything. */
export class BaselineError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "BaselineError";
  }
}

interface Options {
  only?: string[];
  tests?: string[];
  jobs: number;
  json: boolean;
  min: number;
  timeout?: number;
  seed: number;
}

/** A mutant's verdict. `error`: the tests did not run (the mutated source does not load). */
interface Outcome {
  id: string;
  file: string;
  description: string;
  status: "killed" | "survived" | "error";
  equivalent?: string;
  hung: boolean;
  seconds: number;
  /** Why it survives, why it is equivalent, or what went wrong. */
  reason?: string;
  /** The tests that failed. */
  killedBy?: string[];
}

/** Occurrences of `find` in `text`, overlapping ones too: each must be unambiguous. */
function occurrences(text: string, find: string): number {
  let n = 0;
  for (let at = text.indexOf(find); at >= 0; at = text.indexOf(find, at + 1)) n++;
  return n;
}

/** Every way the catalogue fails to fit the sources, each naming its entry. */
function catalogueProblems(mutants: readonly Mutant[], read: (file: string) => string | null) {
  const problems: string[] = [];
  const seen = new Set<string>();
  for (const m of mutants) {
    if (seen.has(m.id)) problems.push(`${m.id}: the id is used twice`);
    if (m.id.includes(",") || !m.id.trim()) problems.push(`${m.id}: not a usable id`);
    seen.add(m.id);
    if (m.find === m.replace) problems.push(`${m.id}: the replacement changes nothing`);
    if (m.equivalent !== undefined && m.survives !== undefined) {
      problems.push(`${m.id}: marked both equivalent and surviving; an equivalent needs no reason`);
    }
    const text = read(m.file);
    if (text === null) {
      problems.push(`${m.id}: no file ${m.file}`);
      continue;
    }
    const n = occurrences(text, m.find);
    if (n !== 1) {
      problems.push(
        `${m.id}: its text ${n ? `occurs ${n} times` : "is missing"} in ${m.file}: ${
          JSON.stringify(m.find.length > 80 ? `${m.find.slice(0, 77)}...` : m.find)
        }`,
      );
    }
  }
  return problems;
}

/** Progress on stderr, only for a person watching a terminal. */
class Progress {
  readonly #on = Deno.stderr.isTerminal();
  readonly #enc = new TextEncoder();
  readonly #running = new Set<string>();
  #done = 0;

  constructor(readonly total: number) {}

  start(id: string) {
    this.#running.add(id);
    this.#show();
  }

  finish(id: string) {
    this.#running.delete(id);
    this.#done++;
    this.#show();
  }

  clear() {
    if (this.#on) Deno.stderr.writeSync(this.#enc.encode("\r\x1b[K"));
  }

  #show() {
    if (!this.#on) return;
    const line = `[${this.#done}/${this.total}] ${[...this.#running].join(", ")}`;
    Deno.stderr.writeSync(this.#enc.encode(`\r\x1b[K${line.slice(0, 120)}`));
  }
}

function judge(m: Mutant, run: TestRun): Outcome {
  const base = { id: m.id, file: m.file, description: m.description, equivalent: m.equivalent };
  const seconds = Math.round(run.seconds * 10) / 10;
  if (run.hung) {
    return { ...base, status: "killed", hung: true, seconds, reason: "the tests hung" };
  }
  if (run.passed) {
    const reason = m.equivalent ?? m.survives ?? NO_REASON;
    return { ...base, status: "survived", hung: false, seconds, reason };
  }
  if (run.failed) {
    return { ...base, status: "killed", hung: false, seconds, killedBy: run.failures };
  }
  return { ...base, status: "error", hung: false, seconds, reason: run.tail };
}

function verdictLine(o: Outcome, timeoutS: number): string {
  const what = o.hung ? `killed (hung: no verdict within ${timeoutS} s)` : o.status;
  const eq = o.equivalent !== undefined ? " [equivalent]" : "";
  return `${what.padEnd(8)} ${`${o.seconds.toFixed(1)}s`.padStart(7)}  ${o.id}${eq}`;
}

interface Summary {
  killed: number;
  scored: number;
  score: number;
  survivors: Outcome[];
  equivalents: Outcome[];
  /** Outcomes that make the run mean nothing: mutants that did not load, equivalents killed. */
  invalid: Outcome[];
}

function summarise(outcomes: Outcome[]): Summary {
  const scored = outcomes.filter((o) => o.equivalent === undefined && o.status !== "error");
  const killed = scored.filter((o) => o.status === "killed").length;
  return {
    killed,
    scored: scored.length,
    score: scored.length ? killed / scored.length : 1,
    survivors: scored.filter((o) => o.status === "survived"),
    equivalents: outcomes.filter((o) => o.equivalent !== undefined && o.status !== "error"),
    invalid: outcomes.filter((o) =>
      o.status === "error" || (o.equivalent !== undefined && o.status === "killed")
    ),
  };
}

function printReport(s: Summary, min: number): void {
  const pct = (x: number) => `${(x * 100).toFixed(1)}%`;
  console.log(
    `\nscore: ${s.killed}/${s.scored} killed (${pct(s.score)}), ${s.equivalents.length} ` +
      `equivalent not scored; minimum ${pct(min)}: ${s.score >= min ? "met" : "NOT MET"}`,
  );
  if (s.survivors.length) console.log("\nsurvivors:");
  for (const o of s.survivors) {
    console.log(`  ${o.id} (${o.file}): ${o.description}\n    survives: ${o.reason}`);
  }
  if (s.equivalents.length) console.log("\nequivalent (not scored):");
  for (const o of s.equivalents) {
    const note = o.status === "killed" ? " -- BUT THE TESTS KILL IT: the claim is wrong" : "";
    console.log(`  ${o.id}: ${o.description}${note}\n    equivalent: ${o.equivalent}`);
  }
  const errors = s.invalid.filter((o) => o.status === "error");
  if (errors.length) console.log("\nmutants whose tests did not run (fix the catalogue):");
  for (const o of errors) console.log(`  ${o.id}:\n    ${o.reason?.replaceAll("\n", "\n    ")}`);
}

function positiveInt(v: string): number {
  const n = Number(v);
  if (!Number.isInteger(n) || n < 1) throw new InvalidArgumentError("a positive integer");
  return n;
}

function fraction(v: string): number {
  const n = Number(v);
  if (!(n >= 0 && n <= 1)) throw new InvalidArgumentError("a fraction from 0 to 1");
  return n;
}

function parseOptions(argv: string[]): Options {
  const cmd = new Command("mutate")
    .description("mutation testing of the consistency core against its tests")
    .option("--only <ids>", "run only these mutants (comma-separated ids)", (v) => v.split(","))
    .option(
      "--tests <files>",
      "run these test files instead (comma-separated)",
      (v) => v.split(","),
    )
    .option("--jobs <n>", "mutants run at a time", positiveInt, 2)
    .option("--json", "print one JSON document instead of text", false)
    .option("--min <fraction>", "exit 1 when the score is below this", fraction, 0.9)
    .option(
      "--timeout <seconds>",
      "a mutant's tests hung after this (default: 10x unmutated)",
      positiveInt,
    )
    .option("--seed <n>", "fast-check's seed (default: a random one, printed)", positiveInt)
    .parse(argv, { from: "user" });
  const o = cmd.opts();
  return {
    only: o.only,
    tests: o.tests,
    jobs: o.jobs,
    json: o.json,
    min: o.min,
    timeout: o.timeout,
    seed: o.seed ?? 1 + Math.floor(Math.random() * 0x7fff_fffe),
  };
}

function pick(only: string[] | undefined): readonly Mutant[] {
  if (!only) return MUTANTS;
  const ids = new Set(MUTANTS.map((m) => m.id));
  const unknown = only.filter((id) => !ids.has(id));
  if (unknown.length) throw new CatalogueError(unknown.map((id) => `${id}: no such mutant`));
  return MUTANTS.filter((m) => only.includes(m.id));
}

async function main(opts: Options): Promise<number> {
  const chosen = pick(opts.only);
  const parent = await Deno.makeTempDir({ prefix: "dcres-mutate-" });
  const cleanup = () => Deno.removeSync(parent, { recursive: true });
  const onInt = () => {
    cleanup();
    Deno.exit(130);
  };
  Deno.addSignalListener("SIGINT", onInt);
  const log = (line: string) => {
    if (!opts.json) console.log(line);
  };
  try {
    const started = performance.now();
    // The unmutated tests run in the snapshot itself; every mutant is copied from it.
    const snap = await sandbox(ROOT, parent, "snapshot", opts.seed);
    const problems = catalogueProblems(MUTANTS, (f) => readSource(snap, f));
    if (problems.length) throw new CatalogueError(problems);
    const wanted = opts.tests ?? TEST_FILES;
    const files = wanted.filter((f) => readSource(snap, f) !== null);
    if (!files.length || (opts.tests && files.length < wanted.length)) {
      throw new CatalogueError([`test files missing: ${wanted.filter((f) => !files.includes(f))}`]);
    }
    const version = await digest(snap);
    log(
      `mutate: ${chosen.length} mutant${chosen.length === 1 ? "" : "s"} against ${
        files.join(", ")
      } (sources and tests ${version}; ` +
        `fast-check seed ${opts.seed}, --seed ${opts.seed} replays it; ${opts.jobs} at a time)`,
    );
    const base = await runTests(snap, files, (opts.timeout ?? 600) * 1000);
    if (!base.passed) {
      throw new BaselineError(
        `the tests fail without any mutation${base.hung ? " (hung)" : ""}; fix them first:\n` +
          base.tail,
      );
    }
    const timeoutS = opts.timeout ?? Math.max(60, Math.ceil(base.seconds * 10));
    log(
      `unmutated: the tests pass in ${base.seconds.toFixed(1)}s; a mutant hangs after ${timeoutS}s`,
    );
    const progress = new Progress(chosen.length);
    const outcomes = await pool(chosen, opts.jobs, async (m) => {
      progress.start(m.id);
      const dir = await sandbox(snap, parent, m.id, opts.seed, m);
      try {
        return judge(m, await runTests(dir, files, timeoutS * 1000));
      } finally {
        await Deno.remove(dir, { recursive: true });
        progress.finish(m.id);
      }
    }, (o) => {
      progress.clear();
      log(verdictLine(o, timeoutS));
    });
    progress.clear();
    const s = summarise(outcomes);
    const seconds = Math.round((performance.now() - started) / 100) / 10;
    const pass = s.score >= opts.min;
    if (opts.json) {
      console.log(JSON.stringify(
        {
          version,
          seed: opts.seed,
          tests: files,
          jobs: opts.jobs,
          timeoutSeconds: timeoutS,
          unmutatedSeconds: Math.round(base.seconds * 10) / 10,
          seconds,
          killed: s.killed,
          scored: s.scored,
          score: s.score,
          min: opts.min,
          pass,
          survivors: s.survivors.map((o) => o.id),
          invalid: s.invalid.map((o) => o.id),
          mutants: outcomes,
        },
        null,
        2,
      ));
    } else {
      printReport(s, opts.min);
      console.log(`\n${outcomes.length} mutants in ${seconds}s`);
    }
    if (s.invalid.length) return 2;
    return pass ? 0 : 1;
  } finally {
    Deno.removeSignalListener("SIGINT", onInt);
    cleanup();
  }
}

if (import.meta.main) {
  try {
    Deno.exit(await main(parseOptions(Deno.args)));
  } catch (e) {
    if (!(e instanceof CatalogueError || e instanceof BaselineError)) throw e;
    console.error(`mutate: ${e.message}`);
    Deno.exit(2);
  }
}
