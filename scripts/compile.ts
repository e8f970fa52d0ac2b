/**
 * `deno task compile`: builds the single `target/dcres` binary with `deno compile`. That needs
 * Deno's `denort` runtime: taken from $DENORT_BIN when set, else downloaded by Deno; when neither
 * works the failure is said in one line.
 */
import { VMM_PERMISSIONS } from "../src/agent/spawn.ts";

const root = new URL("..", import.meta.url).pathname;
const out = `${root}target/dcres`;
const denort = Deno.env.get("DENORT_BIN");
const target = "x86_64-unknown-linux-gnu";

function fail(msg: string): never {
  console.error(`dcres compile: ${msg}`);
  Deno.exit(1);
}

if (denort !== undefined) {
  try {
    if (!Deno.statSync(denort).isFile) {
      fail(`DENORT_BIN=${denort} is not a file; point it at a denort ${Deno.version.deno} binary`);
    }
  } catch {
    fail(
      `DENORT_BIN=${denort} does not exist; point it at a denort ${Deno.version.deno} binary for ${target}`,
    );
  }
}
Deno.mkdirSync(`${root}target`, { recursive: true });
const cmd = new Deno.Command(Deno.execPath(), {
  args: [
    "compile",
    "--quiet",
    ...VMM_PERMISSIONS,
    "--include",
    `${root}src/accel/kvm/vcpu_worker.ts`,
    "--include",
    `${root}src/accel/emu/vcpu_worker.ts`,
    "--include",
    `${root}src/accel/emu/shim.c`,
    "--output",
    out,
    `${root}main.ts`,
  ],
  cwd: root,
  stdout: "inherit",
  stderr: "piped",
});
const child = cmd.spawn();
const timer = setTimeout(() => child.kill("SIGKILL"), 300_000);
const res = await child.output();
clearTimeout(timer);
if (!res.success) {
  const err = new TextDecoder().decode(res.stderr);
  if (denort === undefined && /denort|download|dl\.deno\.land|dns|connect/i.test(err)) {
    fail(
      `the denort runtime for ${target} could not be downloaded; set DENORT_BIN to a denort ${Deno.version.deno} binary (from https://dl.deno.land/release/v${Deno.version.deno}/denort-${target}.zip)`,
    );
  }
  fail(err.trim().split("\n").filter(Boolean).pop() ?? "deno compile failed");
}
console.error(`dcres compile: wrote ${out}`);
