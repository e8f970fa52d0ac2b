/**
 * `dcres demo`: the main job on the built-in guest, end to end in one process: a busy memstamp VM is
 * checkpointed live (precopy, then an incremental copy-on-write one), "crashes", is restored lazily,
 * and verifies every page while its timer keeps counting from the consistency point.
 */
import { DirtyTracker } from "../memory/dirty_tracker.ts";
import { takeCheckpoint } from "../ckpt/save.ts";
import { DEFAULT_MAX_DOWNTIME_MS } from "../ckpt/transaction.ts";
import { restoreCheckpoint } from "../ckpt/restore.ts";
import { Machine, type MachineSpec } from "../vmm/machine.ts";
import { noteSlowGuestKernel, openAcceleratorFlag } from "./accel_flag.ts";
import { CommandFailed, EXIT, type GlobalOptions, report } from "./context.ts";
import { fmtBytes, parseSize } from "./units.ts";
import { sleep } from "../rpc/deadline.ts";

/** Runs the demo; `out` keeps the checkpoint store (default: a temporary directory, removed). */
export async function demoCommand(
  g: GlobalOptions,
  f: { mem: string; vcpus: string; out?: string; accel?: string },
): Promise<number> {
  const say = (s: string) => !g.json && console.error(s);
  const spec: MachineSpec = {
    name: "demo",
    guest: "memstamp",
    memSize: parseSize("--mem", f.mem),
    vcpus: Number(f.vcpus),
    memstamp: { pattern: "hotcold", timerHz: 100, workingSet: 32 << 20 },
  };
  const dir = f.out ?? Deno.makeTempDirSync({ prefix: "dcres-demo-" });
  const noIo = { serialOut: () => {} };
  const accel = openAcceleratorFlag(f.accel);
  noteSlowGuestKernel(accel, say);
  const m = await Machine.create(spec, noIo, accel);
  const tracker = new DirtyTracker(m.vm.memory.pages, () => m.vm.dirtyBitmap());
  await m.vm.start();
  say(
    `1. memstamp on ${accel.kind}: ${
      fmtBytes(spec.memSize)
    }, ${spec.vcpus} vCPUs, stamping every page, then rewriting a 32 MiB hot/cold working set per vCPU`,
  );
  await m.memstamp!.waitStamped(120_000);
  await sleep(300);
  let ticksAtPoint: bigint[] = [];
  const full = await takeCheckpoint(m, tracker, {
    dir,
    mode: "precopy",
    incremental: false,
    compress: false,
    maxDowntimeMs: DEFAULT_MAX_DOWNTIME_MS,
  });
  say(
    `2. live precopy checkpoint: ${fmtBytes(full.stats.bytesWritten)} in ${
      full.stats.totalMs.toFixed(0)
    } ms, ${full.stats.rounds} rounds, downtime ${full.stats.downtimeMs.toFixed(1)} ms`,
  );
  await sleep(300);
  const inc = await takeCheckpoint(m, tracker, {
    dir,
    mode: "cow",
    incremental: true,
    compress: false,
    maxDowntimeMs: DEFAULT_MAX_DOWNTIME_MS,
    onConsistencyPoint: () => (ticksAtPoint = m.memstamp!.statuses().map((s) => s.ticks)),
  });
  say(
    `3. incremental copy-on-write checkpoint: ${
      fmtBytes(inc.stats.bytesWritten)
    } (only what changed), pause ${inc.stats.downtimeMs.toFixed(1)} ms`,
  );
  await m.vm.stop();
  say(`4. the VM is gone; restoring generation ${inc.generation} lazily from ${dir}`);
  const t0 = performance.now();
  const r = restoreCheckpoint({ path: dir, lazy: true, io: noIo, accel });
  await r.machine.vm.start();
  const resumeMs = performance.now() - t0;
  const resident = r.pager!.run();
  await resident;
  const residentMs = performance.now() - t0;
  say(
    `5. running again after ${resumeMs.toFixed(0)} ms; fully resident after ${
      residentMs.toFixed(0)
    } ms (${r.pager!.faults} faults served)`,
  );
  const v = await r.machine.memstamp!.verify();
  const ticks = r.machine.memstamp!.statuses().map((s) => s.ticks);
  await r.machine.vm.stop();
  r.checkpoint.close();
  if (!f.out) Deno.removeSync(dir, { recursive: true });
  const ticksContinue = ticks.every((t, i) => t > ticksAtPoint[i]);
  const result = {
    ok: v.ok && ticksContinue,
    memSize: spec.memSize,
    vcpus: spec.vcpus,
    accel: accel.kind,
    checkpoints: [full, inc],
    restore: { lazy: true, resumeMs, residentMs, faults: r.pager!.faults },
    verify: v,
    ticks: { atConsistencyPoint: ticksAtPoint, afterRestore: ticks },
  };
  report(
    g,
    result,
    () =>
      v.ok
        ? `6. OK: all ${v.pages} pages verified; timer ticks continued from the consistency point (${
          ticksAtPoint.join("/")
        } -> ${ticks.join("/")})`
        : `6. BAD: page ${v.bad?.gfn} is ${v.bad?.reason}`,
  );
  if (!result.ok) throw new CommandFailed("demo failed: the restored guest did not verify");
  return EXIT.OK;
}
