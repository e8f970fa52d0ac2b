/**
 * Loop runner for issue 14's unexplained bad page after a split migration in place: starts a
 * memstamp VM on one agent, splits it in place over two sub-hosts, then `guest verify` and `vm
 * check`, and stops it; again, until a run fails or `--runs` (default 50) pass. A busy loop per
 * `--load` (default 1) runs beside it, so the switchover and early page-outs race under CPU load.
 *
 * Runs alternate between split_memory_test's sizes (256M, working set 64M, main 64M: most pages
 * are handed over at the switch) and a small guest (64M, 32M, 16M) that rewrites every sent page
 * before the switch, so all of them stay on main and the budget pages them out right after it.
 *
 *   deno run -A --unstable-net tests/split_migrate_loop.ts [--runs 50] [--load 1]
 */
import { parseArgs } from "node:util";
import { TestCluster } from "./helpers/cluster.ts";
import { dcres } from "./helpers/cli.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: {
    runs: { type: "string", default: "50" },
    load: { type: "string", default: "1" },
    port: { type: "string", default: "7489" },
  },
});
const runs = Number(values.runs);
const sizes = [
  { mem: "256M", ws: "64M", mainMem: "64M" },
  { mem: "64M", ws: "32M", mainMem: "16M" },
];
const c = new TestCluster(Number(values.port));
const busy = Array.from({ length: Number(values.load) }, () =>
  new Deno.Command(Deno.execPath(), {
    args: ["eval", "for (;;) Math.sqrt(Math.random());"],
    stdout: "null",
    stderr: "null",
  }).spawn());

const [main, sub1, sub2] = await c.up(3);
const a = ["--agent", main];
let passed = 0;
const aborted: string[] = [];
let failure: string | undefined;
try {
  // Failed migrations do not count as runs, up to ten of them.
  for (let i = 0; passed < runs && !failure && aborted.length <= 10; i++) {
    const t0 = performance.now();
    const name = `ml${i}`;
    const size = sizes[i % sizes.length];
    await c.ok([
      ...a,
      ...["vm", "start", "--name", name, "--mem", size.mem, "--ws", size.ws],
      ...["--vcpus", "2", "--pattern", "random"],
    ]);
    // Once every vCPU has stamped its range, the split has written pages to send, and the guest
    // keeps rewriting them at random during the pre-copy and the switch.
    await c.until(main, name, (v) => v.memstamp!.phase.every((p) => p >= 2), 600_000);
    const split = await dcres([
      ...["--json", "migrate", name, "--main", main, "--sub", `${sub1},${sub2}`],
      ...["--main-mem", size.mainMem],
    ], { env: c.env, timeoutMs: 600_000 });
    // A migration that fails (a sub-host's connection lost under load) leaves a one-host VM,
    // which must verify all the same; only a bad page or a bad holder ends the loop.
    if (split.code !== 0) {
      aborted.push(`run ${i}: ${split.stderr.trim()}`);
      console.log(`run ${i}: migrate failed, the VM stays on one host: ${split.stderr.trim()}`);
    }
    const verify = await dcres([...a, "guest", "verify", name], {
      env: c.env,
      timeoutMs: 600_000,
    });
    if (!verify.stdout.startsWith("OK")) {
      failure = `run ${i}: guest verify: ${verify.stdout}${verify.stderr}`;
    }
    const check = failure || split.code !== 0
      ? undefined
      : await dcres([...a, "vm", "check", name], { env: c.env });
    if (check && !check.stdout.startsWith("OK")) {
      failure = `run ${i}: vm check: ${check.stdout}${check.stderr}`;
    }
    if (failure) break;
    await c.ok([...a, "vm", "stop", name]);
    if (split.code !== 0) continue;
    passed++;
    const s = JSON.parse(split.stdout);
    console.log(
      `run ${i} (${size.mem}): OK in ${
        ((performance.now() - t0) / 1000).toFixed(1)
      } s (handed over ${s.handedOver}, sent ${s.pagesSent}, downtime ${
        s.downtimeMs?.toFixed?.(1)
      } ms)`,
    );
  }
} finally {
  for (const b of busy) b.kill("SIGKILL");
  if (failure) console.log(`FAILED after ${passed} passing runs: ${failure}`);
  else console.log(`PASSED ${passed} of ${runs} runs`);
  console.log(`${aborted.length} migrations failed and left a one-host VM that verified`);
  if (!failure) await c.down();
  else console.log(`cluster kept in ${c.env.DCRES_CLUSTER_DIR}`);
}
Deno.exit(failure ? 1 : 0);
