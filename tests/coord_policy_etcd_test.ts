/**
 * Issue 16's acceptance with etcd: two coordinators share their state in a real etcd; a split VM's
 * policy set
 * through the CLI before either runs is taken up by the leader; the leader is killed (SIGKILL), the
 * standby leads within the leadership's lease (and a margin) and goes on with the policy: the next
 * checkpoint is taken, from the catalog, not before it was due; nothing committed is lost.
 */
import { assert, assertEquals } from "./helpers/assert.ts";
import { TestCluster } from "./helpers/cluster.ts";
import { TestCoord } from "./helpers/coord_run.ts";
import { etcdBinary, TestEtcd } from "./helpers/etcd.ts";
import { openState } from "../src/coord/open_state.ts";
import { dueAt } from "../src/coord/policy_time.ts";
import type { CatalogEntry } from "../src/coord/state.ts";

const EVERY = 3000;
const LEADER_TTL = 3000;
/** Time for the standby to notice the lapse and for the status to show it. */
const MARGIN = 3000;

Deno.test({
  name:
    "with etcd, the standby takes over from a killed leader within its lease and goes on with the policies",
  ignore: !etcdBinary(),
  fn: async () => {
    const etcd = await TestEtcd.start();
    const c = new TestCluster(7860);
    const coords: TestCoord[] = [];
    try {
      const [h1, h2] = await c.up(2);
      const common = { store: etcd.url, leaderTtlMs: LEADER_TTL };
      const a = await TestCoord.create(c, [h1, h2], { ...common, id: "coord-a" }, "coord-a");
      const b = await TestCoord.create(c, [h1, h2], { ...common, id: "coord-b" }, "coord-b");
      coords.push(a, b);
      const catalog = async (): Promise<CatalogEntry[]> => {
        const s = await openState(etcd.url);
        try {
          return (await s.list("checkpoint", "v1")).map((x) => x.value)
            .sort((a, b) => a.generation - b.generation);
        } finally {
          await s.close();
        }
      };
      // Split over both hosts: the main host's agent takes each checkpoint with its sub-host.
      await c.ok([
        ...["--agent", h1, "vm", "start", "--main", h1, "--sub", h2, "--name", "v1"],
        ...["--mem", "64M", "--main-mem", "32M"],
      ]);
      // Set while no coordinator runs: the store holds it.
      await c.ok([
        ...["coord", "policy", "set", "v1", "--config", a.conf, "--every", "3s"],
        ...["--mode", "cow", "--incremental", "--full-every", "5", "--replicas", "1"],
      ]);
      a.start();
      await a.until("coord-a leads", (s) => s.leader?.id === "coord-a");
      b.start();
      const vm = (s: Awaited<ReturnType<TestCoord["status"]>>) => s.vms.find((v) => v.vm === "v1");
      await a.until("two checkpoints", (s) => (vm(s)?.checkpoints ?? 0) >= 2);
      assertEquals((await b.status()).leader?.id, "coord-a", "the standby led");

      const before = await catalog();
      const eventsBefore = (await a.status()).events;
      const killedAt = Date.now();
      await a.stop("SIGKILL");
      await b.until("coord-b leads", (s) => s.leader?.id === "coord-b", LEADER_TTL + MARGIN + 5000);
      const tookOver = Date.now() - killedAt;
      assert(tookOver <= LEADER_TTL + MARGIN, `the standby led ${tookOver} ms after the kill`);
      await b.until(
        "a checkpoint by the new leader",
        (s) => (vm(s)?.checkpoints ?? 0) > (before.length + 1),
      );
      const after = await catalog();
      for (const e of before) assert(after.some((x) => x.id === e.id), `lost ${e.id}`);
      assertEquals(after.map((e) => e.hosts), after.map(() => [h1, h2]), "not split checkpoints");
      for (let i = 1; i < after.length; i++) {
        const gap = after[i].timeMs - after[i - 1].timeMs;
        assert(gap >= EVERY, `${after[i].id} taken ${gap} ms after the previous, before due`);
      }
      const firstNew = after.find((e) => e.timeMs > killedAt)!;
      // Not skipped either: taken when due, or at once if it fell due during the takeover.
      const due = Math.max(dueAt("v1", EVERY, before.at(-1)!, 0), killedAt + tookOver);
      assert(firstNew.timeMs <= due + 2000, `${firstNew.timeMs - due} ms late`);
      const s = await b.status();
      for (const e of eventsBefore) {
        assert(s.events.some((x) => x.seq === e.seq) || e.seq < s.events[0].seq, `lost ${e.seq}`);
      }
      console.log(
        `  standby led ${tookOver} ms after the kill (lease ${LEADER_TTL} ms); its first checkpoint ${
          firstNew.timeMs - killedAt
        } ms after the kill, ${
          firstNew.timeMs - before.at(-1)!.timeMs
        } ms after the last before it`,
      );
    } finally {
      for (const x of coords) await x.stop();
      await c.down();
      await etcd.stop();
    }
  },
});
