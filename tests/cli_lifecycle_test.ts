import { assert, assertEquals } from "./helpers/assert.ts";
import { dcres, tempStateDir } from "./helpers/cli.ts";

Deno.test("a detached memstamp VM is listed, paused, resumed, verified and stopped through the CLI", async () => {
  const dir = tempStateDir();
  const cli = (...a: string[]) => dcres(["--state-dir", dir, ...a]);
  const started = await cli(
    "--json",
    "run",
    "--detach",
    "--name",
    "life",
    "--mem",
    "256M",
    "--vcpus",
    "2",
  );
  assertEquals(started.code, 0, started.stderr);
  try {
    assertEquals(JSON.parse(started.stdout).name, "life");
    const dup = await cli("run", "--detach", "--name", "life", "--mem", "64M");
    assertEquals(dup.code, 1);
    assert(dup.stderr.includes("already running"), dup.stderr);

    let ls = JSON.parse((await cli("--json", "vm", "ls")).stdout);
    assertEquals(ls.map((v: { name: string }) => v.name), ["life"]);
    assertEquals(ls[0].vcpus, 2);

    const paused = await cli("--json", "vm", "pause", "life");
    assertEquals(paused.code, 0, paused.stderr);
    assert(JSON.parse(paused.stdout).pauseMs < 1000);
    ls = JSON.parse((await cli("--json", "vm", "ls")).stdout);
    assertEquals(ls[0].state, "paused");
    const refused = await cli("guest", "verify", "life");
    assertEquals(refused.code, 1);
    assert(refused.stderr.includes("is paused; resume it first"), refused.stderr);

    assertEquals((await cli("vm", "resume", "life")).code, 0);
    const v = await cli("guest", "verify", "life");
    assertEquals(v.code, 0, v.stderr);
    assert(v.stdout.startsWith("OK: life: all "), v.stdout);
  } finally {
    const stop = await cli("vm", "stop", "life");
    assertEquals(stop.code, 0, stop.stderr);
  }
  const after = JSON.parse((await cli("--json", "vm", "ls")).stdout);
  assertEquals(after, []);
});

Deno.test("run --for stops the VM on time and reports why", async () => {
  const r = await dcres([
    "--state-dir",
    tempStateDir(),
    "--json",
    "run",
    "--mem",
    "64M",
    "--for",
    "1s",
  ]);
  assertEquals(r.code, 0, r.stderr);
  const rep = JSON.parse(r.stdout);
  assertEquals(rep.exit.reason, "stopped");
  assert(rep.ranMs >= 1000 && rep.ranMs < 10_000, `ran ${rep.ranMs} ms`);
});

Deno.test("Ctrl-C (SIGINT) stops a foreground VM in order and reports why", async () => {
  const { selfCommand } = await import("../src/agent/spawn.ts");
  const dir = tempStateDir();
  const self = selfCommand(["--state-dir", dir, "--json", "run", "--mem", "64M", "--name", "intr"]);
  const child = new Deno.Command(self.cmd, { args: self.args, stdout: "piped", stderr: "piped" })
    .spawn();
  for (let i = 0; i < 100; i++) {
    const ls = await dcres(["--state-dir", dir, "--json", "vm", "ls"]);
    if (JSON.parse(ls.stdout).length === 1) break;
    await new Promise((r) => setTimeout(r, 100));
  }
  child.kill("SIGINT");
  const out = await child.output();
  assertEquals(out.code, 0, new TextDecoder().decode(out.stderr));
  const rep = JSON.parse(new TextDecoder().decode(out.stdout));
  assertEquals(rep.exit.detail, "interrupted by signal");
  assertEquals(JSON.parse((await dcres(["--state-dir", dir, "--json", "vm", "ls"])).stdout), []);
});
