/**
 * One binary as agent and coordinator (issue 16 item 1): `dcres agent --coordinator COORD.json`,
 * and `coordinator` in the agent's config file, run the coordinator in the agent's own process.
 * It leases its own host and the others, and SIGTERM stops both. A missing coordinator config
 * starts nothing; a coordinator that cannot start takes the agent down with its error.
 */
import { join } from "node:path";
import { assert, assertEquals } from "./helpers/assert.ts";
import { TestCluster } from "./helpers/cluster.ts";
import { dcres } from "./helpers/cli.ts";
import { hostOf, TestCoord } from "./helpers/coord_run.ts";
import { SqliteState } from "../src/coord/sqlite_state.ts";

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Waits (at most 15 s) until process `pid` has exited. */
async function gone(pid: number): Promise<boolean> {
  for (const end = Date.now() + 15_000; Date.now() < end; await sleep(100)) {
    try {
      if (/^\d+ \(.*\) Z/.test(Deno.readTextFileSync(`/proc/${pid}/stat`))) return true;
    } catch {
      return true;
    }
  }
  return false;
}

Deno.test("an agent started with --coordinator, or with coordinator in its config, leases itself and the other agents (pruning events older than it keeps); SIGTERM stops both", async () => {
  const c = new TestCluster(7491);
  const root = c.env.DCRES_CLUSTER_DIR;
  await using cleanup = new AsyncDisposableStack();
  cleanup.defer(() => c.down());
  const hosts = await c.up(3);
  const coord = await TestCoord.create(c, hosts, { eventsKeepMs: 3600_000 });
  // An event older than the config keeps, and one within it.
  Deno.mkdirSync(join(root, "coord"), { recursive: true });
  const store = new SqliteState(join(root, "coord", "coord.db"));
  const hourAgo = Date.now() - 3600_000;
  await store.commit([
    { op: "event", event: { kind: "restored", timeMs: hourAgo - 60_000, vm: "old" } },
    { op: "event", event: { kind: "restored", timeMs: hourAgo + 600_000, vm: "recent" } },
  ]);
  await store.close();
  const node1 = join(root, "node1");
  const pid1 = () => Number(Deno.readTextFileSync(join(node1, "agent.pid")));

  // A coordinator config that is not there: the agent refuses in one line and starts nothing.
  await c.fails(
    ["agent", "--listen", "127.0.0.1:1", "--coordinator", join(root, "none.json")],
    /--coordinator .*none\.json/,
  );

  // node1 again, through scripts/cluster, with `coordinator` in its config file.
  await c.run("kill", "node1");
  Deno.writeTextFileSync(join(node1, "agent.json"), JSON.stringify({ coordinator: coord.conf }));
  await c.run("start", "node1");
  const ready = Deno.readTextFileSync(join(node1, "agent.log")).split("\n")
    .filter((l) => l.includes('"ready":true')).at(-1)!;
  assertEquals(JSON.parse(ready).coordinator?.id, "coord-a", ready);
  let s = await coord.until(
    "every host up, leased by node1's coordinator",
    (s) => s.hosts.every((h) => h.state === "up" && h.lease),
  );
  assertEquals(s.leader?.id, "coord-a");
  const kept = s.events.filter((e) => e.kind === "restored").map((e) => e.vm);
  assertEquals(kept, ["recent"], "the leader did not prune the event older than it keeps");
  for (const h of hosts) {
    assert(s.events.some((e) => e.kind === "host-up" && e.host === h), `no host-up for ${h}`);
  }
  Deno.kill(pid1(), "SIGTERM");
  assert(await gone(pid1()), "the agent with a coordinator did not stop on SIGTERM");
  const log = Deno.readTextFileSync(join(node1, "agent.log"));
  assert(log.includes('coordinator \\"coord-a\\" stopped'), log);
  assert(log.includes("agent stopped"), log);

  // The flag, here in a process of its own. A coordinator that cannot start (an agent's identity
  // is not a coordinator's) takes the agent down with its error.
  Deno.removeSync(join(node1, "agent.json"));
  const agentArgs = [
    ...["agent", "--listen", hosts[0], "--data-dir", join(node1, "data")],
    ...["--identity", join(node1, "identity"), "--guest-dir", join(root, "guests")],
  ];
  const bad = join(root, "coord-bad.json");
  const conf = JSON.parse(Deno.readTextFileSync(coord.conf));
  Deno.writeTextFileSync(bad, JSON.stringify({ ...conf, identityDir: join(node1, "identity") }));
  const r = await dcres([...agentArgs, "--coordinator", bad], { env: c.env });
  assert(r.code !== 0, "an agent whose coordinator could not start ran on");
  // The agent logs its start and stop on stderr too; the error is the last line.
  const lastLine = r.stderr.trim().split("\n").at(-1)!;
  assert(/^dcres: identityDir .*role is agent, not coordinator/.test(lastLine), r.stderr);
  const stopped = Date.now();
  coord.start([...agentArgs, "--coordinator", coord.conf]);
  cleanup.defer(() => coord.stop());
  s = await coord.until(
    "every host answering the coordinator of `agent --coordinator`",
    (s) => s.hosts.every((h) => h.state === "up" && h.lastHeartbeatAgeMs! < Date.now() - stopped),
  );
  assertEquals(hostOf(s, hosts[0]).state, "up");
  await coord.stop();
  assert(Deno.readTextFileSync(coord.log).includes('coordinator \\"coord-a\\" stopped'));
});
