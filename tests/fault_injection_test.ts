/**
 * Fault injection on a test cluster (issue 14 item 6): a split VM over three agents of this
 * machine, node3 in a network namespace of its own behind a veth pair and with its checkpoint store
 * on a small tmpfs. In seeded random trials: kill -9 of the VMM, of an agent (main or sub-host) or
 * of the CLI at a random point of a checkpoint, a restore, a merge or a split migration; node3's
 * link cut for seconds while the VM pages through it and in the middle of a parallel checkpoint;
 * node3's store full (ENOSPC) mid-checkpoint after the kills; a fragment damaged
 * between checkpoint and restore. After each trial the hosts come back and the VM is verified,
 * restored from its latest committed checkpoint if it is gone. It prints the trials by kind and the
 * number in which a committed checkpoint was lost or a restored guest failed to verify: 0, or the
 * test fails. Its checkpoints keep one copy (`--replicas 1`): these are the faults of a fragment
 * held once; copies under faults are tests/split_replica_test.ts's.
 *
 * Small by default, so CI runs it (4 to 6 minutes on these 2-core machines, depending on their
 * load): DCRES_FAULT_SEED picks the seed (printed, 14 by default), DCRES_FAULT_TRIALS the kill
 * trials (default 4: one per operation), DCRES_FAULT_CUTS the link cuts of each kind (default 1);
 * e.g. DCRES_FAULT_TRIALS=40 DCRES_FAULT_CUTS=10 for a long run.
 */
import { assertEquals } from "./helpers/assert.ts";
import { FaultRun } from "./helpers/fault_run.ts";
import {
  cutDuringCheckpoint,
  cutWhilePaging,
  damagedFragmentTrial,
  fullStoreTrial,
  killTrial,
  type Op,
  VICTIMS,
} from "./helpers/fault_trials.ts";
import { NetnsLink } from "./helpers/netns.ts";
import { noGuestReason, skipIf } from "./helpers/accel.ts";

const seed = Number(Deno.env.get("DCRES_FAULT_SEED") ?? 14);
const killTrials = Number(Deno.env.get("DCRES_FAULT_TRIALS") ?? 4);
const cuts = Number(Deno.env.get("DCRES_FAULT_CUTS") ?? 1);

Deno.test({
  ...skipIf(noGuestReason, "fault injection"),
  name:
    "fault injection: kill -9 of the VMM, an agent or the CLI during checkpoint, restore, merge and split migration, a sub-host's link cut while paging and mid-checkpoint, a full sub-host store and a damaged fragment lose no committed checkpoint, and every restore verifies",
  sanitizeResources: false,
  sanitizeOps: false,
}, async () => {
  const run = new FaultRun(seed);
  const { c } = run;
  console.log(
    `seed ${seed} (DCRES_FAULT_SEED replays it), ${killTrials} kill trials, ${cuts} link cuts of each kind`,
  );
  const root = c.env.DCRES_CLUSTER_DIR;
  const tmpfs = `${root}/node3/data/ckpt`;
  const port = Number(c.env.DCRES_CLUSTER_PORT);
  // Names and subnet from the port, so runs at other port offsets on this machine do not collide.
  const link = new NetnsLink(port % 256);
  let mounted = false;
  try {
    run.hosts = await c.up(3);
    // node3 again, with its checkpoint store on a tmpfs of its own, so it can be filled to ENOSPC,
    // and in a namespace of its own, so its link can be cut.
    await c.run("kill", "node3");
    Deno.mkdirSync(tmpfs, { recursive: true });
    mounted = (await new Deno.Command("mount", {
      args: ["-t", "tmpfs", "-o", "size=256M", "tmpfs", tmpfs],
    }).output()).success;
    const noNetns = await link.create();
    if (noNetns) {
      console.log(`skipped: link cuts: cannot make a network namespace here: ${noNetns}`);
      await c.run("start", "node3");
    } else {
      run.netns = link;
      await link.startAgent(root, "node3", port);
      run.hosts[2] = `${link.inner}:${port}`;
    }
    await run.startSv();
    const a = ["--agent", run.main];
    await run.ok([...a, "checkpoint", "sv", "--replicas", "1", "--mode", "stop"]);
    await run.audit("the first checkpoint");

    const ops: Op[] = ["checkpoint", "restore", "merge", "migrate"];
    for (let n = 1; n <= killTrials; n++) {
      // Every kind of operation comes up in the first four trials; the rest are drawn.
      const op = n <= ops.length ? ops[n - 1] : run.pick(ops);
      await killTrial(run, n, op, run.pick(VICTIMS[op]), Math.floor(run.rand() * 1500));
    }

    // After the kills, which left interrupted generations and open save sessions behind.
    if (mounted) await fullStoreTrial(run, tmpfs, "a full store");
    else console.log("skipped: ENOSPC trial: cannot mount a tmpfs here");

    if (run.netns) {
      for (let n = 1; n <= cuts; n++) {
        await cutWhilePaging(run, n, 1000 + Math.floor(run.rand() * 4000));
        const delay = Math.floor(run.rand() * 1500);
        await cutDuringCheckpoint(run, n, delay, 1000 + Math.floor(run.rand() * 4000));
      }
    }

    await damagedFragmentTrial(run);

    // At the end every committed checkpoint verifies on every host that holds part of it.
    // The hosts in parallel: each reads its own disk.
    await Promise.all(run.hosts.map(async (h) => {
      for (const id of run.committed.keys()) {
        const v = await run.cli(["--agent", h, "ckpt", "verify", id]);
        if (v.code !== 0) {
          run.lost++;
          run.problem(`LOST at the end: ${id} on ${h}: ${v.stderr}`);
        }
      }
    }));
    console.log(run.report());
    // The failures themselves in the message: CI shows a failing test's message, not its output.
    assertEquals(
      run.lost + run.badRestores,
      0,
      `lost checkpoints plus failed restores:\n${run.problems.join("\n")}`,
    );
    assertEquals(run.liveBad, [], "live guests that failed to verify");
    assertEquals(run.unclean, [], "failures not said in one line");
  } finally {
    // Detached first, so removing the cluster's directory does not trip over the mount point.
    if (mounted) await new Deno.Command("umount", { args: ["-l", tmpfs] }).output();
    await c.down();
    await link.destroy();
  }
});
