/**
 * The coordinator's systemd unit (contrib/systemd/dcres-coord.service) as it ships: systemd accepts
 * it and rates its exposure low; the example config beside it is one the coordinator accepts.
 */
import { assert, assertEquals } from "./helpers/assert.ts";
import { parseCoordConfig } from "../src/coord/config.ts";

const UNIT = new URL("../contrib/systemd/dcres-coord.service", import.meta.url).pathname;
const EXAMPLE = new URL("../contrib/systemd/coord.json.example", import.meta.url).pathname;
/** The most `systemd-analyze security` may rate the unit: it needs no capability or device. */
const MAX_EXPOSURE = 2.5;

async function run(cmd: string, args: string[]): Promise<{ code: number; out: string }> {
  const r = await new Deno.Command(cmd, { args, stdout: "piped", stderr: "piped" }).output();
  const dec = new TextDecoder();
  return { code: r.code, out: dec.decode(r.stdout) + dec.decode(r.stderr) };
}

Deno.test("systemd-analyze verify accepts the coordinator's unit", async () => {
  // verify checks that ExecStart's program exists, so point it at this checkout's launcher.
  const dir = Deno.makeTempDirSync({ prefix: "dcres-unit-" });
  const launcher = new URL("../dcres", import.meta.url).pathname;
  const copy = `${dir}/dcres-coord.service`;
  Deno.writeTextFileSync(
    copy,
    Deno.readTextFileSync(UNIT).replaceAll("/opt/dcres/dcres ", `${launcher} `),
  );
  const r = await run("systemd-analyze", ["verify", copy]);
  assertEquals(r.code, 0, r.out);
  assertEquals(r.out.split("\n").filter((l) => l.includes("dcres-coord")), [], r.out);
});

Deno.test(`systemd-analyze security rates the coordinator's unit ${MAX_EXPOSURE.toFixed(1)} or lower`, async () => {
  const r = await run("systemd-analyze", ["security", "--offline=true", UNIT]);
  const m = /Overall exposure level for dcres-coord\.service: (\d+\.\d+)/.exec(r.out);
  assert(m, r.out);
  console.log(`systemd-analyze security: ${m[1]} (at most ${MAX_EXPOSURE.toFixed(1)})`);
  assert(Number(m[1]) <= MAX_EXPOSURE, r.out);
});

Deno.test("the example coordinator config is accepted", () => {
  const c = parseCoordConfig(Deno.readTextFileSync(EXAMPLE), EXAMPLE);
  assertEquals(c.agents.length, 3);
});
