/**
 * Checkpoint policies (issue 16 item 2) with two agents, a real guest and a coordinator on SQLite:
 * a policy from the config takes cow checkpoints on schedule, never before they are due, one in
 * `fullEvery` full, and the newest restores and verifies; status and /metrics show the
 * recovery-point age; a VM busy with another checkpoint is skipped, not failed; a checkpoint that
 * cannot be written fails, is reported and retried with a doubling backoff until it succeeds; a
 * coordinator killed mid-schedule and started again on its SQLite state loses no policy, catalog
 * entry or event and retakes nothing early. The CLI changes a policy under the running leader.
 */
import { join } from "node:path";
import { assert, assertEquals } from "./helpers/assert.ts";
import { TestCluster, testPort } from "./helpers/cluster.ts";
import { dcres } from "./helpers/cli.ts";
import { TestCoord } from "./helpers/coord_run.ts";
import { openState } from "../src/coord/open_state.ts";
import { dueAt, retryDelay } from "../src/coord/policy_time.ts";
import type { CatalogEntry, CoordEvent } from "../src/coord/state.ts";
import type { CoordStatus } from "../src/coord/status.ts";

const EVERY = 3000;
/** The default leadership lease: a coordinator restarted under its id may wait that long to lead. */
const LEADER_TTL = 5000;

/** Consecutive recovery points of `list` are at least a period apart. */
function assertSpaced(list: CatalogEntry[], every: number): void {
  for (let i = 1; i < list.length; i++) {
    const gap = list[i].timeMs - list[i - 1].timeMs;
    assert(gap >= every, `checkpoint ${list[i].id} taken ${gap} ms after the previous, before due`);
  }
}

Deno.test("policies take checkpoints on schedule that restore; busy VMs are skipped, failures retried with backoff; a restarted coordinator carries on", async () => {
  const c = new TestCluster(7850);
  const dir = c.env.DCRES_CLUSTER_DIR;
  const [h1, h2] = await c.up(2);
  const metricsPort = testPort(9595);
  const coord = await TestCoord.create(c, [h1, h2], {
    metricsPort,
    policies: {
      v1: { everyMs: EVERY, mode: "cow", incremental: true, fullEvery: 3, keep: 50, replicas: 1 },
    },
  });
  const store = join(dir, "coord", "coord.db");
  const catalog = async (vm = "v1"): Promise<CatalogEntry[]> => {
    const s = await openState(store);
    try {
      return (await s.list("checkpoint", vm)).map((x) => x.value)
        .sort((a, b) => a.generation - b.generation);
    } finally {
      await s.close();
    }
  };
  const events = async (): Promise<CoordEvent[]> => {
    const s = await openState(store);
    try {
      return await s.events();
    } finally {
      await s.close();
    }
  };
  const vmOf = (s: CoordStatus, vm = "v1") => s.vms.find((v) => v.vm === vm);
  try {
    await c.ok(["--agent", h1, "vm", "start", "--name", "v1", "--mem", "64M"]);
    coord.start();

    // On schedule: the config's policy seeds the store; one in three checkpoints is full.
    let s = await coord.until("four checkpoints of v1", (s) => vmOf(s)!.checkpoints >= 4);
    assertEquals(vmOf(s)!.policy?.everyMs, EVERY, "the config's policy did not seed the store");
    let list = await catalog();
    assertSpaced(list, EVERY);
    assertEquals(list.map((e) => e.hosts), list.map(() => [h1]));
    const taken = (await events()).filter((e) => e.kind === "checkpoint" && e.vm === "v1");
    const kinds = taken.slice(0, 4).map((e) => /\((full|incremental)/.exec(e.detail!)![1]);
    assertEquals(kinds, ["full", "incremental", "incremental", "full"], JSON.stringify(taken));
    assertEquals(taken.map((e) => e.checkpoint), list.slice(0, taken.length).map((e) => e.id));

    // Status and /metrics show the recovery point's age, under a period and a little.
    s = await coord.status();
    const age = vmOf(s)!.recoveryPointAgeMs!;
    assert(age >= 0 && age < 2 * EVERY, `recovery point ${age} ms old`);
    const text = await c.ok(["coord", "status", "--config", coord.conf]);
    assert(
      /vm v1: every 3\.0s cow incremental \(full every 3\).*recovery point \d+\.\ds old/.test(text),
      text,
    );
    const metrics = await (await fetch(`http://127.0.0.1:${metricsPort}/metrics`)).text();
    const m = /^dcres_coord_recovery_point_age_seconds\{vm="v1"\} ([\d.]+)$/m.exec(metrics);
    assert(m && Number(m[1]) < 2 * EVERY / 1000, metrics);
    assert(/^dcres_coord_checkpoints_total\{vm="v1"\} [4-9]/m.test(metrics), metrics);
    assert(/^dcres_coord_leader 1$/m.test(metrics), metrics);

    // Busy: checkpoints by hand, three at a time so one always runs; the schedule's meet them
    // and are skipped.
    const busyFrom = (await events()).at(-1)!.seq;
    const stopBusy = Date.now() + 5 * EVERY;
    let manual = 0;
    const byHand = async () => {
      while (Date.now() < stopBusy) {
        const r = await dcres([
          ...["--agent", h1, "checkpoint", "v1", "--out", "by-hand", "--mode", "stop"],
          ...["--compress", "zstd", "--keep", "1"],
        ], { env: c.env });
        if (r.code === 0) manual++;
        else assert(/already in progress|under way/.test(r.stderr), r.stderr);
      }
    };
    await Promise.all([byHand(), byHand(), byHand()]);
    const busyEvents = (await events()).filter((e) => e.seq > busyFrom);
    assert(manual > 0, "no checkpoint by hand succeeded");
    assert(
      busyEvents.some((e) => e.kind === "checkpoint-skipped" && /in progress/.test(e.detail!)),
      `no skip while busy: ${JSON.stringify(busyEvents)}`,
    );
    assertEquals(
      busyEvents.filter((e) => e.kind === "checkpoint-failed"),
      [],
      "busy counted as failure",
    );

    // A store that cannot be written: failures reported, retried 1 s, 2 s, 3 s apart (the period).
    const storeDir = join(dir, "node1", "data", "ckpt", "v1");
    Deno.renameSync(storeDir, `${storeDir}.away`);
    Deno.writeTextFileSync(storeDir, "not a directory\n");
    const failFrom = (await events()).at(-1)!.seq;
    s = await coord.until(
      "four failures",
      (s) => s.events.filter((e) => e.seq > failFrom && e.kind === "checkpoint-failed").length >= 4,
    );
    Deno.removeSync(storeDir);
    Deno.renameSync(`${storeDir}.away`, storeDir);
    const failed = (await events()).filter((e) =>
      e.seq > failFrom && e.kind === "checkpoint-failed"
    );
    for (let i = 1; i < failed.length; i++) {
      const gap = failed[i].timeMs - failed[i - 1].timeMs;
      assert(
        gap >= retryDelay(i, EVERY) - 100,
        `retry ${i} after ${gap} ms: ${JSON.stringify(failed)}`,
      );
      assert(gap < retryDelay(i, EVERY) + 2000, `retry ${i} only after ${gap} ms`);
    }
    assert(failed.every((e) => e.detail && !e.detail.includes("\n")), JSON.stringify(failed));
    console.log(
      `  retries ${
        failed.slice(1).map((e, i) => e.timeMs - failed[i].timeMs).join(", ")
      } ms apart: ${failed[0].detail}`,
    );
    const before = (await catalog()).length;
    await coord.until("a checkpoint after the failures", (s) => vmOf(s)!.checkpoints > before);
    const metrics2 = await (await fetch(`http://127.0.0.1:${metricsPort}/metrics`)).text();
    assert(/^dcres_coord_checkpoint_failures_total\{vm="v1"\} [4-9]/m.test(metrics2), metrics2);
    assert(/^dcres_coord_checkpoint_skips_total\{vm="v1"\} [1-9]/m.test(metrics2), metrics2);

    // The CLI changes the policy under the running leader: the next one comes a new period later.
    await c.ok(["coord", "policy", "set", "v1", "--config", coord.conf, "--every", "4s"]);
    const changedAt = Date.now();
    await coord.until("a checkpoint at the new period", (s) => vmOf(s)!.newest!.timeMs > changedAt);
    list = await catalog();
    assert(list.at(-1)!.timeMs - list.at(-2)!.timeMs >= 4000, "the new period was not kept");

    // Killed mid-schedule and started again on its state: nothing lost, nothing retaken early.
    const beforeKill = await catalog();
    const eventsBefore = await events();
    await coord.stop("SIGKILL");
    const restartedAt = Date.now();
    coord.start();
    await coord.until(
      "two more checkpoints after the restart",
      (s) => vmOf(s)!.checkpoints >= beforeKill.length + 2,
      90_000,
    );
    const after = await catalog();
    for (const e of beforeKill) assert(after.some((x) => x.id === e.id), `lost ${e.id}`);
    assertSpaced(after.slice(beforeKill.length - 1), 4000);
    // Nor skipped: the first after the restart comes when due, or once the restarted one leads.
    const last = beforeKill.at(-1)!, next = after[beforeKill.length];
    const due = Math.max(dueAt("v1", 4000, last, 0), restartedAt + LEADER_TTL);
    assert(
      next.timeMs <= due + 2000,
      `the first after the restart came ${next.timeMs - due} ms late`,
    );
    console.log(
      `  after the restart: first checkpoint ${next.timeMs - restartedAt} ms after it, ${
        next.timeMs - last.timeMs
      } ms after the last before it; ${manual} by hand, ${
        busyEvents.filter((e) => e.kind === "checkpoint-skipped").length
      } skipped`,
    );
    const eventsAfter = await events();
    for (const e of eventsBefore) {
      assert(eventsAfter.some((x) => x.seq === e.seq), `lost event ${e.seq}`);
    }
    assertEquals((await coord.status()).vms.find((v) => v.vm === "v1")!.policy?.everyMs, 4000);

    // The newest checkpoint restores, and the guest verifies.
    const newest = after.at(-1)!;
    await c.ok(["--agent", h1, "restore", newest.id, "--name", "v1r"]);
    const verify = await c.ok(["--agent", h1, "guest", "verify", "v1r"]);
    assert(/ok/i.test(verify), verify);

    // Only VMs whose host is up: node1's agent dies, and once the host is suspect the schedule
    // stops trying its VM (at most an attempt already under way fails). A dial of the dead agent
    // fails after the 10 s handshake timeout, so two and a half of those would see retries.
    Deno.kill(Number(Deno.readTextFileSync(join(dir, "node1", "agent.pid"))), "SIGKILL");
    s = await coord.until("node1 suspect", (s) => s.hosts[0].state !== "up");
    const suspectSeq = s.events.findLast((e) => e.kind === "host-suspect" && e.host === h1)!.seq;
    await new Promise((r) => setTimeout(r, 25_000));
    const tried = (await events()).filter((e) => e.seq > suspectSeq && e.vm === "v1");
    assert(tried.length <= 1, `v1 tried while its host was not up: ${JSON.stringify(tried)}`);
  } finally {
    await coord.stop();
    await c.down();
  }
});
