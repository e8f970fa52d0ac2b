/**
 * The coordinator restores a split VM after a host failure (issue 16 item 3), with five agents of
 * this machine, a coordinator on SQLite and a real guest: a split VM over four of them; three cow
 * checkpoints (a full one, then incremental ones); its main host's agent dies (its VMM lives on and fences itself); the
 * coordinator restores the VM onto the survivors in the same shape from the newest checkpoint, the
 * guest verifies and goes on from that checkpoint, and `coord status` shows the restore with its
 * recovery time and point; the host that comes back has its fenced copy stopped and removed, never
 * resumed. Then a sub-host of the restored VM is killed with its VMs: the main's paused VM is
 * stopped and the VM restored from a checkpoint of the restored VM; then its main host, with its
 * VMs, and it is restored once more.
 */
import { join } from "node:path";
import { perAccel } from "./helpers/accel.ts";
import { assert, assertEquals } from "./helpers/assert.ts";
import { TestCluster } from "./helpers/cluster.ts";
import { dcres } from "./helpers/cli.ts";
import { issueHost } from "../src/cli/ca_admin.ts";
import { selfCommand, spawnDetached } from "../src/agent/spawn.ts";
import type { CoordStatus } from "../src/coord/status.ts";
import type { CoordEvent } from "../src/coord/state.ts";
import type { VmInfo } from "../src/vmm/control/protocol.ts";

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const size = perAccel({
  kvm: { mem: "256M", mainMem: "64M", ws: "96M", pageOuts: 5_000 },
  emu: { mem: "128M", mainMem: "32M", ws: "48M", pageOuts: 2_000 },
});

/** Pages written and timer ticks of a memstamp guest over all its vCPUs. */
function progress(v: VmInfo): { written: number; ticks: number } {
  return { written: v.memstamp!.written, ticks: v.memstamp!.ticks.reduce((a, b) => a + b, 0) };
}

Deno.test("the coordinator restores a split VM whose main host, then whose sub-host, failed, from the newest checkpoint onto the survivors; the host that comes back has its fenced copy removed", async () => {
  const c = new TestCluster(7503);
  const dir = c.env.DCRES_CLUSTER_DIR;
  const hosts = await c.up(5);
  const node = (addr: string) => `node${hosts.indexOf(addr) + 1}`;
  const conf = join(dir, "coord.json");
  await issueHost({
    caDir: join(dir, "ca"),
    host: "coord",
    role: "coordinator",
    outDir: join(dir, "coord", "identity"),
  });
  Deno.writeTextFileSync(
    conf,
    JSON.stringify({
      agents: hosts.map((addr, i) => ({ name: `node${i + 1}`, addr })),
      identityDir: join(dir, "coord", "identity"),
      dataDir: join(dir, "coord"),
      id: "coord-a",
      heartbeatMs: 300,
      suspectMs: 1000,
      downMs: 2000,
      lease: { ttlMs: 5000, drift: 0.01, fenceMs: 1000 },
    }),
  );
  const log = join(dir, "coord.log");
  const coord = spawnDetached(selfCommand(["coord", "--config", conf]), log);
  const status = async (): Promise<CoordStatus> =>
    JSON.parse(await c.ok(["--json", "coord", "status", "--config", conf]));
  const until = async (what: string, pred: (s: CoordStatus) => boolean, ms = 120_000) => {
    let last: CoordStatus | undefined;
    for (const end = Date.now() + ms; Date.now() < end; await sleep(250)) {
      last = await status().catch(() => undefined);
      if (last && pred(last)) return last;
    }
    throw new Error(`${what}: ${JSON.stringify(last)}; see ${log}`);
  };
  const placed = (s: CoordStatus) => {
    const h = s.hosts.find((h) => h.vms.some((v) => v.vm === "sv"));
    return h && { main: h.addr, subs: h.vms.find((v) => v.vm === "sv")!.subs };
  };
  const localVm = async (n: string): Promise<VmInfo | undefined> => {
    const r = await dcres(["--state-dir", join(dir, n, "data", "run"), "--json", "vm", "ls"]);
    assertEquals(r.code, 0, r.stderr);
    return (JSON.parse(r.stdout) as VmInfo[]).find((v) => v.name === "sv");
  };
  /** `n` cow checkpoints through `main`, the first full, each with its wall time span. */
  const checkpoints = async (main: string, n: number) => {
    const out = [];
    for (let i = 0; i < n; i++) {
      const before = progress(await c.until(main, "sv", () => true, 10_000));
      const t0 = Date.now();
      const r = JSON.parse(
        await c.ok([
          ...["--agent", main, "--json", "checkpoint", "sv"],
          ...["--mode", "cow", ...(i ? ["--incremental"] : [])],
        ]),
      );
      out.push({ id: r.checkpoint as string, before, t0, t1: Date.now() });
    }
    return out;
  };
  /** Waits for the restore of sv after `host` failed; checks what the event says. */
  let seen = 0;
  const restored = async (host: string, ckpt: { id: string; t0: number; t1: number }) => {
    const mine = (e: CoordEvent) =>
      e.kind === "restored" && e.vm === "sv" && e.host === host && e.seq > seen;
    const s = await until(`sv restored after ${node(host)} failed`, (s) => s.events.some(mine));
    const e = s.events.find(mine)!;
    seen = e.seq;
    assertEquals(e.checkpoint, ckpt.id, JSON.stringify(e));
    assert(e.recoveryMs! > 0, JSON.stringify(e));
    assert(e.recoveryPointMs! >= ckpt.t0 && e.recoveryPointMs! <= ckpt.t1, JSON.stringify(e));
    assert(!s.events.some((e) => e.kind === "restore-failed"), JSON.stringify(s.events));
    const down = s.events.findLast((d) => d.kind === "host-down" && d.host === host)!;
    const p = placed(s)!;
    console.log(
      `  ${node(host)} failed: restored onto ${node(p.main)} with ${p.subs.map(node).join(",")} ${
        e.timeMs - down.timeMs
      } ms after host-down; recovery ${e.recoveryMs} ms from the last heartbeat, recovery point ${
        e.timeMs - e.recoveryPointMs!
      } ms old`,
    );
    return { s, e, p };
  };
  try {
    const [m, ...subs] = hosts.slice(0, 4);
    await c.ok([
      ...["vm", "start", "--main", m, "--sub", subs.join(","), "--name", "sv"],
      ...["--mem", size.mem, "--main-mem", size.mainMem, "--ws", size.ws],
      ...["--vcpus", "2", "--pattern", "random"],
    ]);
    await c.until(m, "sv", (v) => (v.paging?.pageOuts ?? 0) > size.pageOuts, 300_000);
    await until("sv placed over four hosts", (s) => placed(s)?.subs.length === 3);
    const taken = await checkpoints(m, 3);
    await sleep(2000);

    // The main host's agent dies; its VMM lives on and fences itself.
    Deno.kill(Number(Deno.readTextFileSync(join(dir, node(m), "agent.pid"))), "SIGKILL");
    const one = await restored(m, taken[2]);
    assertEquals(one.p.subs.length, 3, "four hosts are up: the same shape");
    assert(![one.p.main, ...one.p.subs].includes(m), JSON.stringify(one.p));
    const fenced = (await localVm(node(m)))!;
    assertEquals(fenced.state, "paused");
    assert(fenced.pausedReason?.startsWith("fenced:"), fenced.pausedReason);
    // The guest goes on from the newest checkpoint: not reset, behind where the fenced copy got.
    const at = progress(await c.until(one.p.main, "sv", (v) => v.state === "running", 10_000));
    assert(at.written >= taken[2].before.written && at.ticks >= taken[2].before.ticks);
    assert(at.written < progress(fenced).written, `${at.written} vs ${progress(fenced).written}`);
    await c.until(one.p.main, "sv", (v) => progress(v).ticks > at.ticks, 60_000);
    assert((await c.ok(["--agent", one.p.main, "guest", "verify", "sv"])).startsWith("OK"));
    const human = await c.ok(["coord", "status", "--config", conf]);
    assert(
      human.split("\n").some((l) =>
        l.includes(" restored ") && l.includes("recovered in") && l.includes("recovery point")
      ),
      human,
    );

    // It comes back: its fenced copy is stopped and removed, never resumed.
    await c.run("start", node(m));
    await until(
      `${node(m)}'s fenced copy cleaned up`,
      (s) => s.events.some((e) => e.kind === "cleaned-up" && e.host === m && e.vm === "sv"),
    );
    for (const end = Date.now() + 10_000; (await localVm(node(m))) && Date.now() < end;) {
      await sleep(250);
    }
    assertEquals(await localVm(node(m)), undefined, `sv is still on ${node(m)}`);
    assertEquals((await c.until(one.p.main, "sv", () => true, 10_000)).state, "running");

    // A sub-host of the restored VM dies with its VMs: the main's VM is stopped, the VM restored.
    const again = await checkpoints(one.p.main, 1);
    const sub = one.p.subs[0];
    await c.run("kill", node(sub));
    const two = await restored(sub, again[0]);
    assertEquals(two.p.subs.length, 3, "four hosts are up again: the same shape");
    assert(![two.p.main, ...two.p.subs].includes(sub), JSON.stringify(two.p));
    const at2 = progress(await c.until(two.p.main, "sv", (v) => v.state === "running", 10_000));
    assert(at2.written >= again[0].before.written && at2.ticks >= again[0].before.ticks);
    assert((await c.ok(["--agent", two.p.main, "guest", "verify", "sv"])).startsWith("OK"));
    // The VM runs once: on its new main only.
    for (const h of hosts.filter((h) => h !== sub && h !== two.p.main)) {
      assertEquals(await localVm(node(h)), undefined, `sv is also on ${node(h)}`);
    }
    await c.run("start", node(sub));
    await until(`${node(sub)} up again`, (s) => s.hosts.every((h) => h.state === "up"));
    assertEquals(await localVm(node(sub)), undefined);
    assertEquals((await c.until(two.p.main, "sv", () => true, 10_000)).state, "running");

    // Its main host is killed with its VMs (`scripts/cluster kill`): restored once more.
    const third = await checkpoints(two.p.main, 1);
    await c.run("kill", node(two.p.main));
    const three = await restored(two.p.main, third[0]);
    assertEquals(three.p.subs.length, 3, "four hosts are up: the same shape");
    const at3 = progress(await c.until(three.p.main, "sv", (v) => v.state === "running", 10_000));
    assert(at3.written >= third[0].before.written && at3.ticks >= third[0].before.ticks);
    assert((await c.ok(["--agent", three.p.main, "guest", "verify", "sv"])).startsWith("OK"));
    await c.run("start", node(two.p.main));
    const end = await until(
      `${node(two.p.main)} up again`,
      (s) => s.hosts.every((h) => h.state === "up"),
    );
    assertEquals(await localVm(node(two.p.main)), undefined, "the killed VM came back");
    assertEquals((await c.until(three.p.main, "sv", () => true, 10_000)).state, "running");
    // Its own restores are not taken for someone else's, and every round was recorded.
    assertEquals(end.events.filter((e) => e.kind === "adopted"), []);
    const failed = Deno.readTextFileSync(log).split("\n").filter((l) => l.includes("failed"));
    assertEquals(failed, [], "the coordinator failed at something");
  } finally {
    try {
      coord.kill("SIGTERM");
    } catch {
      // Gone already.
    }
    await c.down();
  }
});
