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
import { FAST_TIMINGS, hostOf, TestCoord } from "./helpers/coord_run.ts";
import type { VmInfo } from "../src/vmm/control/protocol.ts";
import { LEASE_FILE } from "../src/vmm_process/fence.ts";

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const TTL_MS = FAST_TIMINGS.lease.ttlMs;

Deno.test("the coordinator leases every host, keeps VMs running, and declares a dead host down only after its VM fenced itself and its lease lapsed; a standby takes over from its state", async () => {
  const c = new TestCluster(7495);
  const dir = c.env.DCRES_CLUSTER_DIR;
  const [h1, h2, h3] = await c.up(3);
  const coord = await TestCoord.create(c, [h1, h2, h3]);
  // A second coordinator on the same store, which must stand by while the first leads.
  const standby = await TestCoord.create(c, [h1, h2, h3], { id: "coord-b" }, "coord-b");
  coord.start();
  const localVm = async (node: string, name: string): Promise<VmInfo> => {
    const r = await dcres(["--state-dir", join(dir, node, "data", "run"), "--json", "vm", "ls"]);
    assertEquals(r.code, 0, r.stderr);
    return (JSON.parse(r.stdout) as VmInfo[]).find((v) => v.name === name)!;
  };
  try {
    for (const [addr, name] of [[h1, "v1"], [h2, "v2"]]) {
      await c.ok(["--agent", addr, "vm", "start", "--name", name, "--mem", "64M"]);
    }
    let s = await coord.until(
      "every host up and leased",
      (s) =>
        s.hosts.every((h) => h.state === "up" && h.lease && h.lastHeartbeatAgeMs! < 1000) &&
        hostOf(s, h2).vms.some((v) => v.vm === "v2"),
    );
    assertEquals(s.leader?.id, "coord-a");
    standby.start();
    assertEquals(hostOf(s, h1).vms, [{ vm: "v1", subs: [] }]);
    assertEquals(hostOf(s, h3).vms, []);
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
    s = await coord.until("node2 declared down", (s) => hostOf(s, h2).state === "down");
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
    const lease = hostOf(s, h2).lease!;
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
    assertEquals(hostOf(s, h1).state, "up");
    assertEquals((await localVm("node1", "v1")).state, "running");

    // The first coordinator stops: the standby takes over from the state, and the first, started
    // again, stands by; events are kept and no host is announced again.
    assert(
      !Deno.readTextFileSync(standby.log).includes("leads"),
      "the standby led while the first did",
    );
    const seqBefore = s.events.at(-1)!.seq;
    await coord.stop();
    await coord.until("the standby leads", (s) => s.leader?.id === "coord-b");
    coord.start();
    await sleep(TTL_MS + 1000);
    s = await coord.until(
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
    assertEquals(hostOf(s, h2).state, "down");
    assertEquals((await localVm("node1", "v1")).state, "running", "v1 fenced across the takeover");

    // node2 comes back: leased again under the new epoch; its fenced VM stays paused.
    await c.run("start", "node2");
    s = await coord.until("node2 up again", (s) => hostOf(s, h2).state === "up");
    assertEquals(hostOf(s, h2).lease!.epoch, 2);
    await sleep(TTL_MS);
    assertEquals((await localVm("node2", "v2")).state, "paused", "a fenced VM resumed");
    const human = (await c.ok(["coord", "status", "--config", coord.conf])).split("\n");
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
    await coord.stop();
    await standby.stop();
    await c.down();
  }
});
