/**
 * Remote paging benchmark on four local agents (scripts/cluster): one memstamp VM (random writes
 * over its working set) run all-local, then split with main-mem at 25%, 50% and 100% of its working
 * set, its write rate compared with the all-local run; fault latency of the 25% run; and a split
 * migration of the running VM against a plain one-host move of the same VM (checkpoint, then restore
 * on another agent: dcres has no other way to move a whole VM). Sizes: --mem, --ws (per vCPU),
 * --vcpus (default 512M, 384M, 1 on KVM: a bigger VM spends minutes stamping its memory through
 * paging before it runs; 128M, 64M, 1 on the emulated CPU unless DCRES_BENCH_SIZE=full). The agents
 * run their VMs on the accelerator this process would pick (`DCRES_ACCEL`, else auto).
 */
import { parseSize } from "../../src/cli/units.ts";
import type { VmInfo } from "../../src/vmm/control/protocol.ts";
import { dataRegion } from "../../src/vmm/guests/memstamp/layout.ts";
import { line } from "./stats.ts";
import { BenchAgents } from "./agents.ts";
import { BenchAccel } from "./accel.ts";

const MiB = 1 << 20;
const ba = BenchAccel.open();
const WINDOW_MS = ba.pick({ full: 15_000, emu: 10_000 });
const WARMUP_MS = ba.pick({ full: 20_000, emu: 15_000 });
const sleep = (t: number) => new Promise((r) => setTimeout(r, t));

const agents = new BenchAgents("paging", 7431);
const cluster = (...args: string[]) => agents.cluster(...args);
const dcres = (...args: string[]) => agents.dcres(...args);
const info = (agent: string, name: string) => agents.info(agent, name);

/** Waits until every vCPU of `name` stamped its memory and runs its workload. */
async function untilRunning(agent: string, name: string) {
  for (;;) {
    const v = await info(agent, name);
    if (v.accel !== ba.kind) {
      throw new Error(`${name} runs on ${v.accel}, not ${ba.kind}: is DCRES_ACCEL set alike?`);
    }
    if (v.memstamp!.phase.every((p) => p >= 2)) return;
    await sleep(500);
  }
}

/**
 * Pages per second the guest rewrites over one window, and its paging counters at the end; a split
 * VM first gets WARMUP_MS to bring its working set to main (stamping leaves the last-stamped pages
 * there, not the working set).
 */
async function rate(agent: string, name: string, warmupMs = 0) {
  await untilRunning(agent, name);
  await sleep(warmupMs);
  const a = await info(agent, name);
  const t0 = performance.now();
  await sleep(WINDOW_MS);
  const b = await info(agent, name);
  const secs = (performance.now() - t0) / 1000;
  return { pagesPerSec: (b.memstamp!.written - a.memstamp!.written) / secs, paging: b.paging };
}

/** Runs the paging benchmark and returns its JSON report. */
export async function benchPaging(args: string[]): Promise<unknown> {
  const flag = (name: string, dflt: string) => {
    const i = args.indexOf(name);
    return i >= 0 ? args[i + 1] : dflt;
  };
  const memText = flag("--mem", ba.pick({ full: "512M", emu: "128M" }));
  const wsText = flag("--ws", ba.pick({ full: "384M", emu: "64M" }));
  const vcpus = Number(flag("--vcpus", "1"));
  const memSize = parseSize("--mem", memText), ws = parseSize("--ws", wsText);
  const pinned = dataRegion(memSize).baseGfn * 4096;
  const agents = JSON.parse(await cluster("up", "4")) as Array<{ addr: string }>;
  const [main, ...subs] = agents.map((a) => a.addr);
  const vm = ["--mem", memText, "--ws", wsText, "--vcpus", String(vcpus), "--pattern", "random"];
  const mainMem = (frac: number) => `${Math.ceil((pinned + vcpus * ws * frac) / MiB) + 4}M`;
  console.log(
    `dcres bench paging: memstamp ${memText}, ${vcpus} vCPU(s) each writing ${wsText} at random; main + ${subs.length} sub-hosts on loopback; windows of ${
      WINDOW_MS / 1000
    } s; ${ba.describe()}`,
  );
  try {
    await dcres("--agent", main, "vm", "start", "--name", "local", ...vm);
    const local = await rate(main, "local");
    await dcres("--agent", main, "vm", "stop", "local");
    line(ba.cpu("all-local write rate (reference)"), `${local.pagesPerSec.toFixed(0)} pages/s`);
    const splits: Array<
      { fraction: number; mainMem: string; pagesPerSec: number; paging: unknown }
    > = [];
    for (const fraction of [0.25, 0.5, 1]) {
      const name = `split${fraction * 100}`;
      await dcres(
        "vm",
        "start",
        "--main",
        main,
        "--sub",
        subs.join(","),
        "--main-mem",
        mainMem(fraction),
        "--name",
        name,
        ...vm,
      );
      // With room for the whole working set, faults stop once all of it has come in once.
      const r = await rate(main, name, fraction >= 1 ? 3 * WARMUP_MS : WARMUP_MS);
      await dcres("--agent", main, "vm", "stop", name);
      splits.push({ fraction, mainMem: mainMem(fraction), ...r });
      line(
        ba.cpu(`split, main-mem ${fraction * 100}% of the working set`),
        `${r.pagesPerSec.toFixed(0)} pages/s`,
        { x: r.pagesPerSec / local.pagesPerSec, of: "all-local" },
      );
    }
    const lat = splits[0].paging as VmInfo["paging"];
    line(ba.cpu("fault latency p50 (main-mem 25%)"), `${lat!.faultLatencyUs.p50} us`);
    line(ba.cpu("fault latency p99 (main-mem 25%)"), `${lat!.faultLatencyUs.p99} us`, {
      x: lat!.faultLatencyUs.p99 / lat!.faultLatencyUs.p50,
      of: "p50",
    });

    await dcres("--agent", main, "vm", "start", "--name", "mig", ...vm);
    await untilRunning(main, "mig");
    let t0 = performance.now();
    const split = JSON.parse(
      await dcres(
        "--json",
        "migrate",
        "mig",
        "--main",
        main,
        "--sub",
        subs.join(","),
        "--main-mem",
        mainMem(0.25),
      ),
    );
    const splitMs = performance.now() - t0;
    await dcres("--agent", main, "vm", "stop", "mig");

    await dcres("--agent", main, "vm", "start", "--name", "plain", ...vm);
    await untilRunning(main, "plain");
    t0 = performance.now();
    const ck = JSON.parse(
      await dcres("--agent", main, "--json", "checkpoint", "plain", "--mode", "precopy"),
    );
    await dcres("--agent", main, "vm", "stop", "plain");
    await dcres("--agent", subs[0], "--json", "restore", ck.dir, "--name", "plain");
    const plainMs = performance.now() - t0;
    await dcres("--agent", subs[0], "vm", "stop", "plain");
    line(ba.cpu("plain one-host move (checkpoint + restore)"), `${(plainMs / 1000).toFixed(1)} s`);
    line(ba.cpu("split migration (main-mem 25%)"), `${(splitMs / 1000).toFixed(1)} s`, {
      x: splitMs / plainMs,
      of: "plain move",
    });
    line(ba.cpu("split migration downtime"), `${split.downtimeMs.toFixed(1)} ms`);
    line(ba.cpu("faults served remotely during it"), String(split.remoteFaults));
    return {
      bench: "paging",
      accel: ba.info,
      date: new Date().toISOString(),
      windowMs: WINDOW_MS,
      warmupMs: WARMUP_MS,
      vcpus,
      memSize,
      workingSet: ws,
      localPagesPerSec: local.pagesPerSec,
      splits,
      faultLatencyUs: lat!.faultLatencyUs,
      splitMigration: { wallMs: splitMs, ...split },
      plainMoveMs: plainMs,
    };
  } finally {
    await cluster("down").catch(() => {});
  }
}
