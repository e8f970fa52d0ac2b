/**
 * The coordinator daemon (issue 16 items 1, 3 and 4) with three agents of this machine and its
 * state in SQLite: every host is up and leased; a VM keeps running through many lease periods of
 * renewals; a host whose agent dies (its VMM lives on) goes suspect, then down, and its VM has
 * paused by itself before the coordinator declares the host down, which is never before the
 * host's lease lapsed; a second coordinator stands by, and takes over from the state when the first
 * stops, with nothing lost or announced again; the host that comes back is leased again under a
 * new epoch while its fenced VM stays paused.
 */
import { join } from "node:path";
import { assert, assertEquals } from "./helpers/assert.ts";
import { TestCluster } from "./helpers/cluster.ts";
import { dcres } from "./helpers/cli.ts";
import { issueHost } from "../src/cli/ca_admin.ts";
import { selfCommand, spawnDetached } from "../src/agent/spawn.ts";
import type { CoordStatus, HostStatus } from "../src/coord/status.ts";
import type { VmInfo } from "../src/vmm/control/protocol.ts";
import { LEASE_FILE } from "../src/vmm_process/fence.ts";

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const TTL_MS = 5000;

Deno.test("the coordinator leases every host, keeps VMs running, and declares a dead host down only after its VM fenced itself and its lease lapsed; a standby takes over from its state", async () => {
  const c = new TestCluster(7495);
  const dir = c.env.DCRES_CLUSTER_DIR;
  const [h1, h2, h3] = await c.up(3);
  const conf = join(dir, "coord.json");
  const confB = join(dir, "coord-b.json");
  await issueHost({
    caDir: join(dir, "ca"),
    host: "coord",
    role: "coordinator",
    outDir: join(dir, "coord", "identity"),
  });
  const config = {
    agents: [h1, h2, h3].map((addr, i) => ({ name: `node${i + 1}`, addr })),
    identityDir: join(dir, "coord", "identity"),
    dataDir: join(dir, "coord"),
    id: "coord-a",
    heartbeatMs: 300,
    suspectMs: 1000,
    downMs: 2000,
    lease: { ttlMs: TTL_MS, drift: 0.01, fenceMs: 1000 },
  };
  Deno.writeTextFileSync(conf, JSON.stringify(config));
  // A second coordinator on the same store, which must stand by while the first leads.
  Deno.writeTextFileSync(confB, JSON.stringify({ ...config, id: "coord-b" }));
  const log = join(dir, "coord.log");
  const logB = join(dir, "coord-b.log");
  const startCoord = (file = conf, to = log) =>
    spawnDetached(selfCommand(["coord", "--config", file]), to);
  let coord = startCoord();
  let standby: Deno.ChildProcess | undefined;
  /** Stops a coordinator with SIGTERM and waits until it has gone (its child is unref'd). */
  const stopCoord = async (p: Deno.ChildProcess | undefined) => {
    try {
      p?.kill("SIGTERM");
    } catch {
      return;
    }
    for (const end = Date.now() + 15_000; p && Date.now() < end; await sleep(100)) {
      try {
        if (/^\d+ \(.*\) Z/.test(Deno.readTextFileSync(`/proc/${p.pid}/stat`))) return;
      } catch {
        return;
      }
    }
    if (p) throw new Error(`a coordinator did not stop on SIGTERM; see ${log}`);
  };
  const status = async (): Promise<CoordStatus> =>
    JSON.parse(await c.ok(["--json", "coord", "status", "--config", conf]));
  const host = (s: CoordStatus, addr: string): HostStatus => s.hosts.find((h) => h.addr === addr)!;
  const until = async (what: string, pred: (s: CoordStatus) => boolean): Promise<CoordStatus> => {
    let last: CoordStatus | undefined;
    for (const end = Date.now() + 30_000; Date.now() < end; await sleep(250)) {
      try {
        last = await status();
        if (pred(last)) return last;
      } catch {
        // The store is not there until the coordinator has made it.
      }
    }
    throw new Error(`${what}: ${JSON.stringify(last)}; see ${log}`);
  };
  const localVm = async (node: string, name: string): Promise<VmInfo> => {
    const r = await dcres(["--state-dir", join(dir, node, "data", "run"), "--json", "vm", "ls"]);
    assertEquals(r.code, 0, r.stderr);
    return (JSON.parse(r.stdout) as VmInfo[]).find((v) => v.name === name)!;
  };
  try {
    for (const [addr, name] of [[h1, "v1"], [h2, "v2"]]) {
      await c.ok(["--agent", addr, "vm", "start", "--name", name, "--mem", "64M"]);
    }
    let s = await until(
      "every host up and leased",
      (s) =>
        s.hosts.every((h) => h.state === "up" && h.lease && h.lastHeartbeatAgeMs! < 1000) &&
        host(s, h2).vms.some((v) => v.vm === "v2"),
    );
    assertEquals(s.leader?.id, "coord-a");
    standby = startCoord(confB, logB);
    assertEquals(host(s, h1).vms, [{ vm: "v1", subs: [] }]);
    assertEquals(host(s, h3).vms, []);
    for (const n of ["node1", "node2", "node3"]) {
      assert(
        Deno.statSync(join(dir, n, "data", "run", LEASE_FILE)).isFile,
        `${n} has no lease file`,
      );
    }

    // Three lease periods of renewals: the VMs run on.
    const w0 = (await localVm("node2", "v2")).memstamp!.written;
    await sleep(3 * TTL_MS);
    for (const [node, name] of [["node1", "v1"], ["node2", "v2"]]) {
      const v = await localVm(node, name);
      assertEquals(
        v.state,
        "running",
        `${name} fenced while its lease was renewed: ${v.pausedReason}`,
      );
    }
    assert((await localVm("node2", "v2")).memstamp!.written > w0, "v2 did not run while leased");

    // node2's agent dies; its VMM lives on and must fence itself.
    const killedAt = Date.now();
    Deno.kill(Number(Deno.readTextFileSync(join(dir, "node2", "agent.pid"))), "SIGKILL");
    s = await until("node2 declared down", (s) => host(s, h2).state === "down");
    const fenced = await localVm("node2", "v2");
    assertEquals(fenced.state, "paused", "v2 runs on although its host was declared down");
    assert(fenced.pausedReason?.includes("lease"), fenced.pausedReason);
    const events = s.events.filter((e) => e.host === h2);
    const suspect = events.find((e) => e.kind === "host-suspect")!;
    const down = events.find((e) => e.kind === "host-down")!;
    assert(suspect && down && suspect.seq < down.seq, JSON.stringify(events));
    assert(
      fenced.fencedAtMs! < down.timeMs,
      `v2 fenced at ${fenced.fencedAtMs}, after host-down at ${down.timeMs}`,
    );
    const lease = host(s, h2).lease!;
    assert(
      down.timeMs >= lease.expiresMs,
      `down at ${down.timeMs}, before the lease lapsed at ${lease.expiresMs}`,
    );
    assertEquals(lease.epoch, 2, "declaring the host down raises its lease's epoch");
    console.log(
      `  killed→suspect ${suspect.timeMs - killedAt} ms, killed→fenced ${
        fenced.fencedAtMs! - killedAt
      } ms, killed→down ${down.timeMs - killedAt} ms (fenced ${
        down.timeMs - fenced.fencedAtMs!
      } ms before down; lease lapsed ${down.timeMs - lease.expiresMs} ms before down)`,
    );
    assertEquals(host(s, h1).state, "up");
    assertEquals((await localVm("node1", "v1")).state, "running");

    // The first coordinator stops: the standby takes over from the state, and the first, started
    // again, stands by; events are kept and no host is announced again.
    assert(!Deno.readTextFileSync(logB).includes("leads"), "the standby led while the first did");
    const seqBefore = s.events.at(-1)!.seq;
    await stopCoord(coord);
    await until("the standby leads", (s) => s.leader?.id === "coord-b");
    coord = startCoord();
    await sleep(TTL_MS + 1000);
    s = await until(
      "hosts re-learned",
      (s) => s.hosts.filter((h) => h.addr !== h2).every((h) => h.lastHeartbeatAgeMs! < 1000),
    );
    assertEquals(s.leader?.id, "coord-b");
    assert(s.events.some((e) => e.seq === down.seq), "the new leader lost the events");
    assertEquals(
      s.events.filter((e) => e.seq > seqBefore && e.kind.startsWith("host-")),
      [],
      "the new leader re-announced hosts",
    );
    assertEquals(host(s, h2).state, "down");
    assertEquals((await localVm("node1", "v1")).state, "running", "v1 fenced across the takeover");

    // node2 comes back: leased again under the new epoch; its fenced VM stays paused.
    await c.run("start", "node2");
    s = await until("node2 up again", (s) => host(s, h2).state === "up");
    assertEquals(host(s, h2).lease!.epoch, 2);
    await sleep(TTL_MS);
    assertEquals((await localVm("node2", "v2")).state, "paused", "a fenced VM resumed");
    const human = (await c.ok(["coord", "status", "--config", conf])).split("\n");
    for (const [n, state] of [["node1", "up"], ["node2", "up"], ["node3", "up"]]) {
      assertEquals(
        human.filter((l) => l.startsWith(`${n} `) && l.includes(` ${state},`)).length,
        1,
        human.join("\n"),
      );
    }
    const verify = await c.ok(["--agent", h1, "guest", "verify", "v1"]);
    assert(/ok/i.test(verify), verify);
  } finally {
    await stopCoord(coord);
    await stopCoord(standby);
    await c.down();
  }
});
