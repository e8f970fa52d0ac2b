/**
 * A partition (issue 16, acceptance): the coordinator loses contact with one agent while that
 * agent's VM runs. The agent runs in a network namespace joined to this one by a veth pair, and the
 * test cuts that link. Sampling every 50 ms, straight from the VM's control socket (which a cut
 * network does not reach) and from the coordinator's store, it checks that the VM fenced itself
 * strictly before the coordinator declared its host down, that no sample ever saw the VM run once
 * the host was down, and that the coordinator's restore elsewhere started only after the old copy
 * had fenced, so no sample saw two copies able to run. Healed, the host is up again and its fenced
 * copy is cleaned up, never resumed; the restored copy runs on and verifies.
 */
import { join } from "node:path";
import { assert, assertEquals } from "./helpers/assert.ts";
import { TestCluster } from "./helpers/cluster.ts";
import { hostOf, TestCoord } from "./helpers/coord_run.ts";
import { NetnsLink } from "./helpers/netns.ts";
import { SqliteState } from "../src/coord/sqlite_state.ts";
import type { CoordEvent } from "../src/coord/state.ts";
import { request } from "../src/vmm/control/client.ts";
import type { VmInfo } from "../src/vmm/control/protocol.ts";

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const SAMPLE_MS = 50;

/** One look at the partitioned VM and the coordinator's events, in that order of reading. */
interface Sample {
  /** Wall clock before reading the events. */
  t0: number;
  /** Wall clock after reading the VM. */
  t1: number;
  /** The host-down event of the partitioned host, if it was in the store at t0. */
  down?: CoordEvent;
  /** The VM's `restored` event, if it was in the store at t0. */
  restored?: CoordEvent;
  /** The VM as its VMM reported it, or why it could not. */
  vm: VmInfo | string;
}

/** Whether the VM of a sample may have run a vCPU then: not paused with all vCPUs parked. */
const mayRun = (s: Sample) =>
  typeof s.vm === "string" || s.vm.state !== "paused" || s.vm.fencedAtMs === undefined;

/** The inode of a network namespace (by /proc/PID/ns/net or a /run/netns bind mount). */
const nsIno = (path: string) => Deno.statSync(path).ino;

Deno.test({
  name:
    "a partitioned host's VM fences itself before the coordinator declares the host down, so it never runs on after; healed, the host is up again and the VM stays fenced",
  sanitizeResources: false,
  sanitizeOps: false,
}, async () => {
  const c = new TestCluster(7489);
  const root = c.env.DCRES_CLUSTER_DIR;
  const port = Number(c.env.DCRES_CLUSTER_PORT);
  const link = new NetnsLink(port % 256);
  await using cleanup = new AsyncDisposableStack();
  // Undone last to first: the namespace goes after the agents and the coordinator.
  cleanup.defer(() => link.destroy());
  cleanup.defer(() => c.down());
  const hosts = await c.up(3);
  await c.run("kill", "node3");
  const noNetns = await link.create();
  if (noNetns) {
    console.log(`skipped: cannot make a network namespace here: ${noNetns}`);
    return;
  }
  await link.startAgent(root, "node3", port);
  const h3 = `${link.inner}:${port}`;
  hosts[2] = h3;
  const agentPid = Number(Deno.readTextFileSync(join(root, "node3", "agent.pid")));
  assertEquals(nsIno(`/proc/${agentPid}/ns/net`), nsIno(`/run/netns/${link.ns}`));

  const coord = await TestCoord.create(c, hosts);
  cleanup.defer(() => coord.stop());
  coord.start();
  await coord.until("every host up", (s) => s.hosts.every((h) => h.state === "up"));
  const state = new SqliteState(join(root, "coord", "coord.db"));
  cleanup.defer(() => state.close());

  await c.ok(["--agent", h3, "vm", "start", "--name", "p", "--mem", "64M"]);
  await c.ok(["--agent", hosts[0], "vm", "start", "--name", "q", "--mem", "64M"]);
  await coord.until("p placed on node3", (s) => hostOf(s, h3).vms.some((v) => v.vm === "p"));
  // A checkpoint to restore from, held outside the namespace too. From inside it node3 cannot reach
  // the others' loopback addresses, so the test puts the copy where a peer's replica would be.
  const ck = JSON.parse(
    await c.ok(["--agent", h3, "--json", "checkpoint", "p", "--mode", "cow", "--replicas", "1"]),
  );
  const copy = await new Deno.Command("cp", {
    args: ["-r", join(root, "node3", "data", "ckpt", "p"), join(root, "node1", "data", "ckpt")],
  }).output();
  assert(copy.success, new TextDecoder().decode(copy.stderr));
  const run3 = join(root, "node3", "data", "run");
  const p0 = await request<VmInfo>(run3, "p", { op: "info" });
  // The link really is the namespace's: the VM's VMM is in it, and this process is not.
  assertEquals(nsIno(`/proc/${p0.pid}/ns/net`), nsIno(`/run/netns/${link.ns}`));
  assert(nsIno("/proc/self/ns/net") !== nsIno(`/run/netns/${link.ns}`), "the test runs in the ns");
  const seq0 = (await state.events()).at(-1)?.seq ?? 0;

  const samples: Sample[] = [];
  let sampling = true;
  const sampler = (async () => {
    while (sampling) {
      const t0 = Date.now();
      const events = await state.events({ after: seq0 });
      let vm: VmInfo | string;
      try {
        vm = await request<VmInfo>(run3, "p", { op: "info" });
      } catch (e) {
        vm = (e as Error).message;
      }
      samples.push({
        t0,
        t1: Date.now(),
        down: events.find((e) => e.kind === "host-down" && e.host === h3),
        restored: events.find((e) => e.kind === "restored" && e.vm === "p"),
        vm,
      });
      await sleep(Math.max(0, SAMPLE_MS - (Date.now() - t0)));
    }
  })();
  cleanup.defer(async () => {
    sampling = false;
    await sampler;
  });

  // Running for a while before the cut, with its lease renewed.
  await sleep(1000);
  const cutAt = Date.now();
  await link.cut();
  const ifs = new TextDecoder().decode(
    (await new Deno.Command("ip", { args: ["-n", link.ns, "-o", "link", "show"] }).output())
      .stdout,
  );
  assert(/state DOWN/.test(ifs), `the namespace's end of the link is not down: ${ifs}`);
  for (const end = Date.now() + 60_000; !samples.at(-1)?.down; await sleep(100)) {
    assert(Date.now() < end, `node3 never declared down; see ${coord.log}`);
  }
  for (const end = Date.now() + 90_000; !samples.at(-1)?.restored; await sleep(100)) {
    assert(Date.now() < end, `p never restored after node3 was declared down; see ${coord.log}`);
  }
  await sleep(4 * SAMPLE_MS);
  const seen = [...samples];
  const down = seen.at(-1)!.down!;
  const beforeCut = seen.filter((s) => s.t1 < cutAt);
  assert(beforeCut.length >= 10, `only ${beforeCut.length} samples before the cut`);
  assert(!beforeCut.some((s) => !mayRun(s)), "the VM was not running before the cut");
  const last = seen.at(-1)!.vm as VmInfo;
  assertEquals(last.state, "paused", "the VM runs on although its host was declared down");
  assert(last.pausedReason?.includes("lease"), last.pausedReason);

  // Fenced strictly before declared down: by the VMM's own clock reading, and by the samples.
  const fencedAt = last.fencedAtMs!;
  assert(fencedAt < down.timeMs, `fenced at ${fencedAt}, not before host-down at ${down.timeMs}`);
  const lastRunning = seen.findLast(mayRun)!;
  assert(
    lastRunning.t1 < down.timeMs,
    `a sample read the VM as running at ${lastRunning.t1}, after host-down at ${down.timeMs}`,
  );
  // No sample that had already found the host down in the store found the VM able to run: the
  // events were read first, so this needs no clock at all.
  const firstDown = seen.findIndex((s) => s.down);
  const afterDown = seen.slice(firstDown);
  assertEquals(afterDown.filter(mayRun).length, 0, "the VM ran while its host was down");
  assert(afterDown.length >= 5, `only ${afterDown.length} samples after host-down`);
  // And the guest wrote nothing once fenced.
  const fenced = seen.filter((s) => !mayRun(s)).map((s) => (s.vm as VmInfo).memstamp!.written);
  assertEquals(new Set(fenced).size, 1, "the guest wrote memory while fenced");
  assert(
    (beforeCut.at(-1)!.vm as VmInfo).memstamp!.written > (beforeCut[0].vm as VmInfo).memstamp!
      .written,
    "the guest did not run before the cut",
  );

  // The restore elsewhere, from the checkpoint: the old copy had stopped before the new started.
  const restored = seen.find((s) => s.restored)!.restored!;
  // The event names the host that failed; the placement, where the VM runs now.
  assertEquals(restored.host, h3);
  const newMain = (await state.get("placement", "p"))!.value.main;
  assert(newMain !== h3, `restored on ${newMain}`);
  assertEquals(restored.checkpoint, ck.checkpoint);
  assert(restored.seq > down.seq, "restored before the host was declared down");
  assert(
    fencedAt < restored.timeMs,
    `old copy fenced at ${fencedAt}, restored at ${restored.timeMs}`,
  );
  assertEquals(seen.filter((s) => s.restored && mayRun(s)).length, 0, "two copies ran at once");
  const t = Date.now();
  const vms = JSON.parse(await c.ok(["--agent", newMain, "--json", "vm", "ls"]));
  const startedAt = t - (vms as VmInfo[]).find((v) => v.name === "p")!.uptimeMs;
  assert(fencedAt < startedAt, `the new copy started at ${startedAt}, before the fence`);
  assert((await c.ok(["--agent", newMain, "guest", "verify", "p"])).startsWith("OK"));
  const s = await coord.status();
  const events = s.events.filter((e) =>
    e.host === h3 && e.seq > seq0 && e.kind.startsWith("host-")
  );
  assertEquals(events.map((e) => e.kind), ["host-suspect", "host-down"], JSON.stringify(events));
  assert(down.timeMs >= hostOf(s, h3).lease!.expiresMs, "declared down before its lease lapsed");
  console.log(
    `  cut→suspect ${events[0].timeMs - cutAt} ms, cut→fenced ${fencedAt - cutAt} ms, cut→down ${
      down.timeMs - cutAt
    } ms; fenced ${
      down.timeMs - fencedAt
    } ms before down; ${seen.length} samples, ${afterDown.length} after down`,
  );

  // A partition, not a crash: the agent lived through it, and answers again once healed.
  const agentState = Deno.readTextFileSync(`/proc/${agentPid}/stat`).split(") ")[1]?.[0];
  assert(agentState && !"ZX".includes(agentState), `node3's agent died (${agentState})`);

  // Healed: the host is up again under a new epoch; its fenced copy never runs again and is
  // cleaned up, while the restored copy runs on.
  const healedAt = samples.length;
  await link.heal();
  await coord.until("node3 up again", (s) => hostOf(s, h3).state === "up");
  assertEquals(hostOf(await coord.status(), h3).lease!.epoch, 2);
  await coord.until(
    "node3's fenced copy of p cleaned up",
    (s) => s.events.some((e) => e.kind === "cleaned-up" && e.host === h3 && e.vm === "p"),
  );
  for (const end = Date.now() + 30_000; typeof samples.at(-1)?.vm !== "string"; await sleep(100)) {
    assert(Date.now() < end, "node3's copy of p still answers after its clean-up");
  }
  const healed = samples.slice(healedAt);
  assertEquals(healed.filter((x) => typeof x.vm !== "string" && mayRun(x)).length, 0, "resumed");
  assert(
    healed.every((x) => typeof x.vm === "string" || x.vm.memstamp!.written === fenced[0]),
    "the fenced guest wrote memory after healing",
  );
  const moved = await request<VmInfo>(join(root, "node1", "data", "run"), "p", { op: "info" })
    .catch(() => undefined);
  if (newMain === hosts[0]) assertEquals(moved?.state, "running", "the restored p stopped");
  const q = await request<VmInfo>(join(root, "node1", "data", "run"), "q", { op: "info" });
  assertEquals(q.state, "running", "a VM on the other side of the cut was fenced");
});
