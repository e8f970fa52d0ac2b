import { skipIf } from "./helpers/accel.ts";
import { assert, assertEquals } from "./helpers/assert.ts";
import { dcres, tempStateDir } from "./helpers/cli.ts";

/** The error is one line on stderr, starts with "dcres:", and mentions `what`. */
function oneLineError(stderr: string, what: string) {
  const lines = stderr.trim().split("\n").filter((l) => !l.startsWith("note:"));
  assertEquals(lines.length, 1, `expected one error line, got:\n${stderr}`);
  assert(lines[0].startsWith("dcres: "), lines[0]);
  assert(lines[0].includes(what), `"${lines[0]}" should mention "${what}"`);
}

const run = (args: string[], env?: Record<string, string>) =>
  dcres(["--state-dir", tempStateDir(), "run", ...args, "--for", "1s"], { env });

Deno.test("an unknown guest is a usage error naming the choices", async () => {
  const r = await run(["--guest", "windows"]);
  assertEquals(r.code, 2);
  oneLineError(r.stderr, "unknown guest; use one of: memstamp, linux");
});

Deno.test("--mem 0 is a usage error", async () => {
  const r = await run(["--mem", "0"]);
  assertEquals(r.code, 2);
  oneLineError(r.stderr, "--mem 0");
});

Deno.test("--mem beyond the host's free memory fails before allocating anything", async () => {
  const r = await run(["--guest", "linux", "--mem", "3000G"]);
  assertEquals(r.code, 1);
  oneLineError(r.stderr, "exceeds the host's available");
});

Deno.test("a missing kernel file is named", async () => {
  const r = await run(["--guest", "linux", "--mem", "512M", "--kernel", "/nonexistent/vmlinuz"]);
  assertEquals(r.code, 1);
  oneLineError(r.stderr, "--kernel /nonexistent/vmlinuz: no such file");
});

Deno.test("a missing /dev/kvm says how to get one", async () => {
  const r = await run(["--accel", "kvm"], { DCRES_KVM_DEVICE: "/nonexistent/kvm" });
  assertEquals(r.code, 1);
  oneLineError(r.stderr, "does not exist: load the kvm module");
});

Deno.test("a device that is not KVM is refused by name", async () => {
  const r = await run(["--accel", "kvm"], { DCRES_KVM_DEVICE: "/dev/null" });
  assertEquals(r.code, 1);
  oneLineError(r.stderr, "/dev/null is not a KVM device");
});

Deno.test("an unknown --accel is a usage error naming the choices", async () => {
  const r = await run(["--accel", "tcg"]);
  assertEquals(r.code, 2);
  oneLineError(r.stderr, `--accel must be auto, kvm or emu, got "tcg"`);
});

Deno.test("the linux guest on the emulated CPU is refused in one line naming the accelerator", async () => {
  const kernel = Deno.makeTempFileSync(); // refused before it is parsed
  const r = await run(["--guest", "linux", "--accel", "emu", "--kernel", kernel]);
  assertEquals(r.code, 1);
  oneLineError(
    r.stderr,
    "the linux guest needs KVM; this host runs the emulated CPU (--accel emu)",
  );
});

/** Why the permission test cannot run here, or undefined. */
function noPermissionTestReason(): string | undefined {
  if (Deno.uid() !== 0) return "needs root to drop to an unprivileged user";
  try {
    Deno.statSync("/dev/kvm");
  } catch {
    return "no /dev/kvm here to be refused";
  }
  return undefined;
}

const NO_PERMISSION = "no permission on /dev/kvm says to run as root or join the kvm group";
Deno.test({
  name: NO_PERMISSION,
  ...skipIf(noPermissionTestReason(), NO_PERMISSION),
}, async () => {
  // The check runs as nobody, down the path `--accel kvm` takes (accelChoice, openAccelerator);
  // that path imports no npm package, so it needs no npm cache.
  const select = new URL("../src/accel/select.ts", import.meta.url).href;
  const denoDir = Deno.makeTempDirSync();
  Deno.chmodSync(denoDir, 0o777);
  const out = await new Deno.Command("setpriv", {
    args: [
      "--reuid=65534",
      "--regid=65534",
      "--clear-groups",
      Deno.execPath(),
      "eval",
      `import { accelChoice, openAccelerator } from "${select}";
       try { openAccelerator(accelChoice("kvm")); } catch (e) { console.log(e.message); }`,
    ],
    env: { DENO_DIR: denoDir, HOME: denoDir },
  }).output();
  const msg = new TextDecoder().decode(out.stdout).trim();
  assertEquals(
    msg,
    "no permission to open /dev/kvm: run as root or add this user to the group that owns it (usually 'kvm')",
  );
});

Deno.test("a command on a VM that does not exist points at vm ls", async () => {
  const r = await dcres(["--state-dir", tempStateDir(), "guest", "verify", "ghost"]);
  assertEquals(r.code, 1);
  oneLineError(r.stderr, `no running VM named "ghost"`);
});

Deno.test("an agent's bad --peers, --zone, --replicas or config values fail in one line before it starts", async () => {
  const dir = Deno.makeTempDirSync();
  const config = `${dir}/agent.json`;
  Deno.writeTextFileSync(config, JSON.stringify({ peers: ["h2:7400", "h3"], dataDir: dir }));
  const cases: Array<[string[], string]> = [
    [["--peers", "10.0.0.2:7400,10.0.0.3"], `--peers: peer "10.0.0.3" has no port`],
    [["--zone", "rack/1"], `--zone "rack/1" is not a zone`],
    [["--replicas", "0"], `--replicas "0": give a whole number of copies from 1 to 16`],
    [["--config", config], `${config}: peers: peer "h3" has no port`],
  ];
  for (const [args, what] of cases) {
    const r = await dcres(["agent", "--data-dir", dir, ...args]);
    assertEquals(r.code === 0, false, r.stdout);
    oneLineError(r.stderr, what);
  }
  assertEquals([...Deno.readDirSync(dir)].map((e) => e.name), ["agent.json"]);
});

Deno.test("a background scrub rate or interval that is not one is a usage error naming the flag", async () => {
  const agent = (flags: string[]) =>
    dcres(["agent", "--data-dir", tempStateDir(), "--identity", tempStateDir(), ...flags]);
  const rate = await agent(["--scrub-rate", "fast"]);
  assertEquals(rate.code, 2);
  oneLineError(rate.stderr, "--scrub-rate fast: not a size");
  const every = await agent(["--scrub-rate", "32M/s", "--scrub-every", "soon"]);
  assertEquals(every.code, 2);
  oneLineError(every.stderr, "--scrub-every soon: not a duration");
});
