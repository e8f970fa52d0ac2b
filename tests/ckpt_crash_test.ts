/**
 * Crash safety through the CLI, as an operator meets it: checkpoints killed at random points (the VM
 * process or the CLI, kill -9) and a disk that fills mid-checkpoint never harm the previous
 * checkpoint, and a half-written one is never taken for a whole one.
 */
import { assert, assertEquals } from "./helpers/assert.ts";
import { dcres, tempStateDir } from "./helpers/cli.ts";
import { selfCommand } from "../src/agent/spawn.ts";

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
/** Longest a checkpoint CLI may take to end once its VMM or itself was killed. */
const CHILD_MS = 120_000;

async function ok(args: string[], dir: string) {
  const r = await dcres(["--state-dir", dir, ...args], { timeoutMs: 120_000 });
  assertEquals(r.code, 0, `dcres ${args.join(" ")}: ${r.stderr}`);
  return r;
}

async function vmPid(dir: string, name: string): Promise<number> {
  return JSON.parse((await ok(["--json", "vm", "ls"], dir)).stdout).find((v: { name: string }) =>
    v.name === name
  ).pid;
}

Deno.test("checkpoints killed at random points (VM process or CLI, kill -9) always leave the previous checkpoint restorable and verified", async () => {
  const state = tempStateDir();
  const store = Deno.makeTempDirSync({ prefix: "dcres-crash-" });
  let name = "crash0";
  await ok(
    ["run", "--detach", "--name", name, "--mem", "128M", "--vcpus", "2", "--ws", "8M"],
    state,
  );
  await ok(["checkpoint", name, "--out", store, "--mode", "stop"], state);
  // Twelve trials take every mode, full and incremental, and both kills once (the pattern of
  // i % 3, i % 2 and i % 4 repeats every 12); DCRES_CRASH_TRIALS=48 for a longer run.
  const trials = Number(Deno.env.get("DCRES_CRASH_TRIALS") ?? 12);
  let vmKills = 0, cliKills = 0, committedDuringTrials = 0;
  try {
    for (let i = 1; i <= trials; i++) {
      const trialStart = performance.now();
      const before = (await ok(["--json", "ckpt", "ls", store], state)).stdout;
      const mode = ["stop", "precopy", "cow"][i % 3];
      const self = selfCommand([
        "--state-dir",
        state,
        "checkpoint",
        name,
        "--out",
        store,
        "--mode",
        mode,
        ...(i % 2 ? ["--incremental"] : []),
      ]);
      const child = new Deno.Command(self.cmd, { args: self.args, stdout: "null", stderr: "null" })
        .spawn();
      await sleep(Math.floor(Math.random() * 700));
      const killVm = i % 4 !== 0;
      if (killVm) {
        Deno.kill(await vmPid(state, name), "SIGKILL");
        vmKills++;
      } else {
        try {
          child.kill("SIGKILL");
        } catch {
          // Already finished.
        }
        cliKills++;
      }
      // The one wait here with no bound of its own: a checkpoint CLI whose VMM is alive and never
      // answers (or never closes the socket) would stall the whole test, so it is killed and the
      // trial fails naming it instead.
      const timer = setTimeout(() => {
        try {
          child.kill("SIGKILL");
        } catch {
          // Already finished.
        }
      }, CHILD_MS);
      const t0 = performance.now();
      const st = await child.status;
      clearTimeout(timer);
      assert(
        performance.now() - t0 < CHILD_MS,
        `trial ${i} (${mode}, kill ${killVm ? "VMM" : "CLI"}): the checkpoint CLI did not end ` +
          `within ${CHILD_MS} ms of the kill (exit ${st.code}, signal ${st.signal})`,
      );
      if (!killVm) await sleep(1500); // the VMM finishes the checkpoint on its own
      const ls = JSON.parse((await ok(["--json", "ckpt", "ls", store], state)).stdout) as Array<
        { status: string }
      >;
      assert(ls.every((g) => g.status === "ok" || g.status === "incomplete"), JSON.stringify(ls));
      if (
        ls.filter((g) => g.status === "ok").length >
          JSON.parse(before).filter((g: { status: string }) => g.status === "ok").length
      ) committedDuringTrials++;
      await ok(["ckpt", "verify", store], state);
      if (killVm) {
        name = `crash${i}`;
        await ok(
          ["restore", store, "--detach", "--name", name, ...(i % 3 === 0 ? ["--lazy"] : [])],
          state,
        );
      }
      const v = await ok(["guest", "verify", name], state);
      assert(v.stdout.startsWith("OK"), v.stdout);
      // Each trial's time, so a run that overruns its budget shows which trials were slow.
      console.log(
        `trial ${i}: ${mode}, kill ${killVm ? "VMM" : "CLI"}, ${
          ((performance.now() - trialStart) / 1000).toFixed(1)
        } s`,
      );
    }
    // The next checkpoint cleans the interrupted ones and is itself good.
    await ok(["checkpoint", name, "--out", store, "--mode", "stop"], state);
    const ls = JSON.parse((await ok(["--json", "ckpt", "ls", store], state)).stdout) as Array<
      { status: string }
    >;
    assert(
      ls.every((g) => g.status === "ok"),
      `interrupted generations were cleaned: ${JSON.stringify(ls)}`,
    );
    await ok(["ckpt", "verify", store], state);
    console.log(
      `${trials} trials: ${vmKills} VM kills, ${cliKills} CLI kills, ${committedDuringTrials} checkpoints committed before the kill`,
    );
  } finally {
    await dcres(["--state-dir", state, "vm", "stop", name]);
    Deno.removeSync(store, { recursive: true });
  }
});

Deno.test("a disk that fills mid-checkpoint fails it with one clear line; the previous checkpoint stays good and the next one succeeds", async () => {
  if (Deno.uid() !== 0) return console.log("skipped: mounting a small tmpfs needs root");
  const state = tempStateDir();
  const mnt = Deno.makeTempDirSync({ prefix: "dcres-full-" });
  const mount = await new Deno.Command("mount", {
    args: ["-t", "tmpfs", "-o", "size=180M", "tmpfs", mnt],
  }).output();
  if (!mount.success) {
    return console.log(
      `skipped: cannot mount tmpfs: ${new TextDecoder().decode(mount.stderr).trim()}`,
    );
  }
  const store = `${mnt}/store`;
  try {
    await ok(["run", "--detach", "--name", "full", "--mem", "128M", "--ws", "4M"], state);
    await ok(["guest", "verify", "full"], state); // answers once every page is stamped
    await ok(["checkpoint", "full", "--out", store, "--mode", "stop"], state);
    const r = await dcres([
      "--state-dir",
      state,
      "checkpoint",
      "full",
      "--out",
      store,
      "--mode",
      "precopy",
    ]);
    assertEquals(r.code, 1, r.stdout);
    const lines = r.stderr.trim().split("\n");
    assertEquals(lines.length, 1, r.stderr);
    assert(lines[0].includes("disk full"), lines[0]);
    assert(lines[0].includes("previous checkpoint is intact"), lines[0]);
    await ok(["ckpt", "verify", store], state);
    const inc = await ok([
      "--json",
      "checkpoint",
      "full",
      "--out",
      store,
      "--mode",
      "stop",
      "--incremental",
    ], state);
    assertEquals(JSON.parse(inc.stdout).generation, 2);
    await ok(["ckpt", "verify", store], state);
    await ok(["vm", "stop", "full"], state);
    await ok(["restore", store, "--detach", "--name", "full2"], state);
    assert((await ok(["guest", "verify", "full2"], state)).stdout.startsWith("OK"));
  } finally {
    await dcres(["--state-dir", state, "vm", "stop", "full"]);
    await dcres(["--state-dir", state, "vm", "stop", "full2"]);
    await new Deno.Command("umount", { args: ["-l", mnt] }).output();
  }
});

Deno.test("a lazy restore that meets a damaged page stops the VM naming it, instead of running on with zero pages", async () => {
  const state = tempStateDir();
  const store = Deno.makeTempDirSync({ prefix: "dcres-lazybad-" });
  try {
    await ok(["run", "--detach", "--name", "lz", "--mem", "64M", "--ws", "48M"], state);
    await sleep(3000);
    await ok(["checkpoint", "lz", "--out", store, "--mode", "stop"], state);
    await ok(["vm", "stop", "lz"], state);
    // A byte of a page the restore does not read before the guest runs (past its first MiB).
    const gen = [...Deno.readDirSync(store)].find((e) => e.name.startsWith("g"))!.name;
    const frag = [...Deno.readDirSync(`${store}/${gen}`)].find((e) => e.name.endsWith(".frag"))!;
    const file = `${store}/${gen}/${frag.name}`;
    const bytes = Deno.readFileSync(file);
    bytes[Math.floor(bytes.length * 0.6)] ^= 0xff;
    Deno.writeFileSync(file, bytes);
    const r = await dcres(
      ["--state-dir", state, "restore", store, "--lazy", "--name", "lz", "--for", "60s"],
      { timeoutMs: 120_000 },
    );
    assertEquals(r.code, 1, `the restored VM ran on: ${r.stdout} ${r.stderr}`);
    assert(
      r.stdout.includes("lazy restore from") && r.stdout.includes("restore it again"),
      r.stdout,
    );
  } finally {
    await dcres(["--state-dir", state, "vm", "stop", "lz"]);
    Deno.removeSync(store, { recursive: true });
  }
});
