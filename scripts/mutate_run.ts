/**
 * `deno task mutate`'s mechanics (scripts/mutate.ts): copies of the project in temporary
 * directories, a mutant applied to one, its tests run with a timeout, and a pool that runs a few at
 * a time.
 */
import type { Mutant } from "./mutants.ts";

/** What a copy of the project holds: enough to run the tests, nothing built. */
const COPIED = ["src", "tests", "scripts", "deno.json", "deno.lock"];
/** Written at the root of every copy, run before the tests (`deno test --preload`). */
const PRELOAD = "mutate_preload.ts";

/** What one run of the tests did. */
export interface TestRun {
  /** Every test passed. */
  passed: boolean;
  /** At least one test failed (as opposed to the files not loading at all). */
  failed: boolean;
  /** Killed at the timeout. */
  hung: boolean;
  seconds: number;
  /** Names of the tests that failed. */
  failures: string[];
  /** The end of what the tests printed. */
  tail: string;
}

/** The text of `file` under `root`, or null when there is no such file. */
export function readSource(root: string, file: string): string | null {
  try {
    return Deno.readTextFileSync(`${root}/${file}`);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return null;
    throw e;
  }
}

async function copyTree(from: string, to: string): Promise<void> {
  const st = await Deno.lstat(from);
  if (st.isSymlink) await Deno.symlink(await Deno.readLink(from), to);
  else if (st.isFile) await Deno.copyFile(from, to);
  else if (st.isDirectory) {
    await Deno.mkdir(to);
    for await (const e of Deno.readDir(from)) {
      await copyTree(`${from}/${e.name}`, `${to}/${e.name}`);
    }
  }
}

/**
 * A copy under `parent` of the project at `from` (the project itself, or a snapshot of it), with
 * `mutant` applied. The preload ends a failing property at its first counterexample (shrinking only
 * makes a counterexample readable, and a mutant needs only a verdict) and fixes fast-check's seed,
 * so that a run can be replayed.
 */
export async function sandbox(
  from: string,
  parent: string,
  name: string,
  seed: number,
  mutant?: Mutant,
): Promise<string> {
  const dir = await Deno.makeTempDir({ dir: parent, prefix: `${name}-` });
  for (const entry of COPIED) {
    try {
      await copyTree(`${from}/${entry}`, `${dir}/${entry}`);
    } catch (e) {
      if (!(e instanceof Deno.errors.NotFound)) throw e;
    }
  }
  if (mutant) {
    const path = `${dir}/${mutant.file}`;
    const text = await Deno.readTextFile(path);
    await Deno.writeTextFile(path, text.replace(mutant.find, () => mutant.replace));
  }
  await Deno.writeTextFile(
    `${dir}/${PRELOAD}`,
    `import fc from "fast-check";\nfc.configureGlobal({ endOnFailure: true, seed: ${seed} });\n`,
  );
  return dir;
}

/**
 * A short digest of the sources and tests under `root` (every file of src/ and tests/, helpers
 * included): which version of them a score is of.
 */
export async function digest(root: string): Promise<string> {
  const files: string[] = [];
  const walk = (dir: string) => {
    for (const e of Deno.readDirSync(`${root}/${dir}`)) {
      if (e.isDirectory) walk(`${dir}/${e.name}`);
      else if (e.isFile) files.push(`${dir}/${e.name}`);
    }
  };
  for (const dir of ["src", "tests"]) walk(dir);
  const text = files.sort().map((f) => `${f}\0${readSource(root, f)}\0`).join("");
  const hash = new Uint8Array(
    await crypto.subtle.digest("SHA-256", new TextEncoder().encode(text)),
  );
  return [...hash.slice(0, 6)].map((b) => b.toString(16).padStart(2, "0")).join("");
}

/** Runs `files`' tests in the copy at `dir`; a run still going after `timeoutMs` is killed. */
export async function runTests(dir: string, files: string[], timeoutMs: number): Promise<TestRun> {
  const started = performance.now();
  const child = new Deno.Command(Deno.execPath(), {
    args: ["test", "--allow-all", "--no-check", "--fail-fast", "--preload", PRELOAD, ...files],
    cwd: dir,
    env: { NO_COLOR: "1" },
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  let hung = false;
  const timer = setTimeout(() => {
    hung = true;
    child.kill("SIGKILL");
  }, timeoutMs);
  const out = await child.output();
  clearTimeout(timer);
  const seconds = (performance.now() - started) / 1000;
  const dec = new TextDecoder();
  const stdout = dec.decode(out.stdout), stderr = dec.decode(out.stderr);
  // Deno's summary counts a file that throws while loading as one failed test, one that does not
  // parse not at all: only the first is the mutant's doing.
  const failed = /FAILED \| \d+ passed \| [1-9]\d* failed/.test(stdout);
  // Its ERRORS section names each failed test as "name => ./file:line:column", and an error no
  // test caught (a rejected promise nobody awaited) as "./file (uncaught error)".
  const errors = stdout.slice(Math.max(0, stdout.indexOf(" ERRORS ")));
  const failures = [
    ...new Set(
      [...errors.matchAll(/^(.+) => \.\/\S+:\d+:\d+$|^\.\/(\S+) \(uncaught error\)$/gm)]
        .map((x) => x[1] ?? `an error no test caught, in ${x[2]}`),
    ),
  ];
  const tail = `${stdout}\n${stderr}`.trim().split("\n").slice(-15).join("\n");
  return { passed: out.success && !hung, failed, hung, seconds, failures, tail };
}

/** Runs `fn` over `items`, `jobs` at a time; `done` hears of each result as it comes. */
export async function pool<T, R>(
  items: readonly T[],
  jobs: number,
  fn: (item: T) => Promise<R>,
  done: (r: R) => void,
): Promise<R[]> {
  const results: R[] = new Array(items.length);
  let next = 0;
  const worker = async () => {
    while (next < items.length) {
      const i = next++;
      results[i] = await fn(items[i]);
      done(results[i]);
    }
  };
  await Promise.all(Array.from({ length: Math.min(jobs, items.length) }, worker));
  return results;
}
