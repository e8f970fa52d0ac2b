/**
 * Agents on this machine (scripts/cluster): VMs started, checkpointed and restored through agents
 * over QUIC with mutual authentication; an agent killed with -9 leaves its VMs running and finds them
 * again; strangers and garbage are refused without harming the agent.
 */
import { noKvmReason } from "./helpers/accel.ts";
import { assert, assertEquals } from "./helpers/assert.ts";
import { dcres } from "./helpers/cli.ts";
import { testPort } from "./helpers/cluster.ts";
import { encodeFrame, FrameKind } from "../src/net/frame.ts";
import { selfCommand } from "../src/agent/spawn.ts";

const env: Record<string, string> = {
  DCRES_CLUSTER_DIR: Deno.makeTempDirSync({ prefix: "dcres-cluster-" }),
  DCRES_CLUSTER_PORT: String(testPort(7471)),
  XDG_CONFIG_HOME: Deno.makeTempDirSync({ prefix: "dcres-client-" }),
};
const cluster = (...args: string[]) =>
  new Deno.Command(new URL("../scripts/cluster", import.meta.url).pathname, {
    args,
    env,
    stdout: "piped",
    stderr: "piped",
  }).output();

async function ok(args: string[]) {
  const r = await dcres(args, { env, timeoutMs: 120_000 });
  assertEquals(r.code, 0, `dcres ${args.join(" ")}: ${r.stderr}`);
  return r;
}

Deno.test("three agents: a VM started through agent 1 and checkpointed is restored through agent 2 from a copy, and verifies", async () => {
  const up = await cluster("up", "3");
  assert(up.success, new TextDecoder().decode(up.stderr));
  const agents = JSON.parse(new TextDecoder().decode(up.stdout)) as Array<
    { name: string; addr: string }
  >;
  assertEquals(agents.map((a) => a.name), ["node1", "node2", "node3"]);
  const [a1, a2, a3] = agents.map((a) => ["--agent", a.addr]);
  try {
    await ok([...a1, "vm", "start", "--name", "v1", "--mem", "128M", "--vcpus", "2", "--ws", "8M"]);
    await ok([...a1, "guest", "verify", "v1"]);
    const ck = JSON.parse(
      (await ok([...a1, "--json", "checkpoint", "v1", "--mode", "cow"])).stdout,
    );
    assertEquals(ck.generation, 1);
    // Paths do not cross the network: the copy goes into agent 2's store and is named by its store.
    const copy = `${env.DCRES_CLUSTER_DIR}/node2/data/ckpt`;
    await new Deno.Command("cp", { args: ["-r", ck.dir, `${copy}/v1`] }).output();
    for (const lazy of [false, true]) {
      const name = lazy ? "v2lazy" : "v2";
      const r = JSON.parse(
        (await ok([
          ...a2,
          "--json",
          "restore",
          "v1",
          "--name",
          name,
          ...(lazy ? ["--lazy"] : []),
        ])).stdout,
      );
      assertEquals(r.lazy, lazy);
      assert(r.residentMs >= r.resumeMs);
      assert((await ok([...a2, "guest", "verify", name])).stdout.startsWith("OK"));
    }
    const ls = JSON.parse((await ok([...a2, "--json", "vm", "ls"])).stdout).map((
      v: { name: string },
    ) => v.name);
    assertEquals(ls, ["v2", "v2lazy"]);
    assertEquals(JSON.parse((await ok([...a1, "--json", "vm", "ls"])).stdout).length, 1);
    await ok([...a2, "ckpt", "verify", "v1"]);
    // On the agent whose store holds it, the checkpoint is named by its id (or 8+ digits of it).
    assert(/^[0-9a-f]{32}$/.test(ck.checkpoint), ck.checkpoint);
    const inspected = JSON.parse(
      (await ok([...a1, "--json", "ckpt", "inspect", ck.checkpoint])).stdout,
    );
    assertEquals(inspected.id, ck.checkpoint);
    const listed = JSON.parse(
      (await ok([...a1, "--json", "ckpt", "ls", ck.checkpoint.slice(0, 8)])).stdout,
    );
    assertEquals(listed.map((g: { id: string }) => g.id), [ck.checkpoint]);
    await ok([...a1, "restore", ck.checkpoint, "--name", "v3"]);
    assert((await ok([...a1, "guest", "verify", "v3"])).stdout.startsWith("OK"));
    const unknown = await dcres([...a3, "restore", ck.checkpoint], { env });
    assertEquals(unknown.code, 1);
    assert(unknown.stderr.includes(`no checkpoint with id ${ck.checkpoint}`), unknown.stderr);
  } finally {
    await cluster("down");
  }
});

/** Boots the Linux guest through agent `a` and reads its banner through `console`, then Ctrl-]. */
async function linuxConsole(a: string[]) {
  await ok([...a, "vm", "start", "--guest", "linux", "--name", "lx", "--mem", "256M"]);
  const self = selfCommand([...a, "console", "lx"]);
  const child = new Deno.Command(self.cmd, {
    args: self.args,
    env,
    stdin: "piped",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const killer = setTimeout(() => child.kill("SIGKILL"), 90_000);
  let seen = "";
  const reader = child.stdout.getReader();
  while (!seen.includes("Linux version")) {
    const { value, done } = await reader.read();
    if (done) break;
    seen += new TextDecoder().decode(value);
  }
  reader.releaseLock();
  const w = child.stdin.getWriter();
  await w.write(new Uint8Array([0x1d]));
  await w.close();
  const out = await child.output();
  clearTimeout(killer);
  assert(seen.includes("Linux version"), `console showed: ${seen.slice(0, 400)}`);
  assertEquals(out.code, 0, new TextDecoder().decode(out.stderr));
  await ok([...a, "vm", "stop", "lx"]);
}

Deno.test("through an agent, console relays a Linux guest's serial output until Ctrl-], and exec on a guest without a shell fails in one line", async () => {
  const kernels = [...Deno.readDirSync("/boot")].filter((e) => e.name.startsWith("vmlinuz-"));
  if (!kernels.length) return console.log("skipped: no /boot/vmlinuz-* (linux-image-cloud-amd64)");
  const up = await cluster("up", "1");
  assert(up.success, new TextDecoder().decode(up.stderr));
  const [{ addr }] = JSON.parse(new TextDecoder().decode(up.stdout));
  const a = ["--agent", addr];
  try {
    if (noKvmReason) {
      console.log(`skipped: the Linux console part (the linux guest needs KVM): ${noKvmReason}`);
    } else {
      await linuxConsole(a);
    }
    await ok([...a, "vm", "start", "--name", "ms", "--mem", "64M"]);
    const r = await dcres([...a, "console", "ms", "--exec", "true"], { env });
    assertEquals(r.code, 1);
    assertEquals(r.stderr.trim().split("\n").length, 1, r.stderr);
    assert(r.stderr.includes("exec needs a guest with a shell"), r.stderr);
  } finally {
    await cluster("down");
  }
});

Deno.test("an agent killed with -9 leaves its VM running; restarted, it lists it and can checkpoint it", async () => {
  const up = await cluster("up", "1");
  assert(up.success, new TextDecoder().decode(up.stderr));
  const [{ addr }] = JSON.parse(new TextDecoder().decode(up.stdout));
  const a = ["--agent", addr];
  const dir = `${env.DCRES_CLUSTER_DIR}/node1`;
  try {
    await ok([...a, "vm", "start", "--name", "survivor", "--mem", "64M"]);
    Deno.kill(Number(Deno.readTextFileSync(`${dir}/agent.pid`)), "SIGKILL");
    await new Promise((r) => setTimeout(r, 300));
    const down = await dcres([...a, "vm", "ls"], { env });
    assertEquals(down.code, 1, "the agent is gone");
    assert(down.stderr.includes("cannot reach the agent"), down.stderr);
    const self = selfCommand([
      "agent",
      "--listen",
      addr,
      "--data-dir",
      `${dir}/data`,
      "--identity",
      `${dir}/identity`,
      "--metrics-port",
      String(testPort(9466)),
    ]);
    const agent = new Deno.Command(self.cmd, { args: self.args, stdout: "piped", stderr: "null" })
      .spawn();
    Deno.writeTextFileSync(`${dir}/agent.pid`, String(agent.pid));
    const reader = agent.stdout.getReader();
    const first = new TextDecoder().decode((await reader.read()).value);
    assert(first.includes('"ready":true'), first);
    reader.releaseLock();
    void agent.stdout.cancel();
    const ls = JSON.parse((await ok([...a, "--json", "vm", "ls"])).stdout);
    assertEquals(ls.map((v: { name: string }) => v.name), ["survivor"]);
    assert((await ok([...a, "guest", "verify", "survivor"])).stdout.startsWith("OK"));
    const ck = JSON.parse(
      (await ok([...a, "--json", "checkpoint", "survivor", "--mode", "stop"])).stdout,
    );
    assertEquals(ck.generation, 1);
    const st = JSON.parse((await ok(["--json", "status", "--data-dir", `${dir}/data`])).stdout);
    assertEquals(st.vms.map((v: { name: string }) => v.name), ["survivor"]);
    assertEquals(st.checkpoints[0].generations, 1);
    const metrics = await (await fetch(`http://127.0.0.1:${testPort(9466)}/metrics`)).text();
    assert(metrics.includes("dcres_vms 1"), metrics);
    assert(/dcres_checkpoint_store_bytes\{store="survivor"\} \d+/.test(metrics), metrics);
  } finally {
    await cluster("down");
  }
});

Deno.test("a stranger's certificate is refused with one line at the client; garbage frames never crash the agent", async () => {
  const up = await cluster("up", "1");
  assert(up.success, new TextDecoder().decode(up.stderr));
  const [{ addr }] = JSON.parse(new TextDecoder().decode(up.stdout));
  try {
    const { initCa, issueHost } = await import("../src/cli/ca_admin.ts");
    const d = Deno.makeTempDirSync();
    await initCa(`${d}/ca`);
    await issueHost({ caDir: `${d}/ca`, host: "stranger", outDir: `${d}/s` });
    const clientCa = `${env.XDG_CONFIG_HOME}/dcres/client/ca.crt`;
    const r = await dcres([
      "--agent",
      addr,
      "--cert",
      `${d}/s/host.crt`,
      "--key",
      `${d}/s/host.key`,
      "--ca",
      clientCa,
      "vm",
      "ls",
    ], { env });
    assertEquals(r.code, 1);
    const lines = r.stderr.trim().split("\n");
    assertEquals(lines.length, 1, r.stderr);
    assert(lines[0].includes("refused us") && lines[0].includes("not by the cluster CA"), lines[0]);
    const log = Deno.readTextFileSync(`${env.DCRES_CLUSTER_DIR}/node1/agent.log`);
    assert(log.includes("refused"), "the agent logged the refusal");

    // Thousands of random and malformed frames on the agent's local socket, bounded in time.
    const sock = `${env.DCRES_CLUSTER_DIR}/node1/data/agent.sock`;
    const t0 = performance.now();
    for (let i = 0; i < 2000 && performance.now() - t0 < 20_000; i++) {
      let conn: Deno.UnixConn;
      try {
        conn = await Deno.connect({ transport: "unix", path: sock });
      } catch {
        await new Promise((r) => setTimeout(r, 5)); // backlog full: the agent is still accepting
        continue;
      }
      const kind = i % 3 === 0 ? 9 : FrameKind.CONTROL;
      const payload = crypto.getRandomValues(new Uint8Array(i % 64));
      const frame = i % 5 === 0
        ? crypto.getRandomValues(new Uint8Array(16))
        : encodeFrame(kind as FrameKind, payload);
      if (i % 7 === 0) frame[2] = 77; // unknown version
      await conn.write(frame).catch(() => {});
      conn.close();
    }
    const health = JSON.parse((await ok(["--agent", addr, "--json", "vm", "ls"])).stdout);
    assertEquals(health, []);

    // The CLI closes its connection before it exits: more commands in a row than the agent
    // admits connections per address all go through (the 17th failed while closes were lost).
    for (let i = 0; i < 20; i++) await ok(["--agent", addr, "vm", "ls"]);
  } finally {
    await cluster("down");
  }
});
