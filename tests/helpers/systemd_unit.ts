/** systemd-analyze's verdicts on a shipped unit (contrib/systemd/), for the units' tests. */
import { assert, assertEquals } from "./assert.ts";

/** Runs a command; returns its exit code and output. */
export async function run(cmd: string, args: string[]): Promise<{ code: number; out: string }> {
  const r = await new Deno.Command(cmd, { args, stdout: "piped", stderr: "piped" }).output();
  const dec = new TextDecoder();
  return { code: r.code, out: dec.decode(r.stdout) + dec.decode(r.stderr) };
}

/** Asserts that `systemd-analyze verify` accepts the unit `unit` (a path) with no word about it. */
export async function assertUnitVerifies(unit: string): Promise<void> {
  const name = unit.split("/").at(-1)!;
  // verify checks that ExecStart's program exists, so point it at this checkout's launcher.
  const dir = Deno.makeTempDirSync({ prefix: "dcres-unit-" });
  const launcher = new URL("../../dcres", import.meta.url).pathname;
  const copy = `${dir}/${name}`;
  Deno.writeTextFileSync(
    copy,
    Deno.readTextFileSync(unit).replaceAll("/opt/dcres/dcres ", `${launcher} `),
  );
  const r = await run("systemd-analyze", ["verify", copy]);
  assertEquals(r.code, 0, r.out);
  assertEquals(r.out.split("\n").filter((l) => l.includes(name.split(".")[0])), [], r.out);
}

/** Asserts that `systemd-analyze security` rates the unit `unit` (a path) `max` or lower. */
export async function assertUnitExposure(unit: string, max: number): Promise<void> {
  const name = unit.split("/").at(-1)!;
  const r = await run("systemd-analyze", ["security", "--offline=true", unit]);
  const m = new RegExp(`Overall exposure level for ${name.replaceAll(".", "\\.")}: (\\d+\\.\\d+)`)
    .exec(r.out);
  assert(m, r.out);
  console.log(`systemd-analyze security: ${m[1]} (at most ${max.toFixed(1)})`);
  assert(Number(m[1]) <= max, r.out);
}
