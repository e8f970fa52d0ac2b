/** `dcres demo`: the main job on the built-in guest, end to end, in one process. */
import { Machine, type MachineSpec } from "../vmm/machine.ts";
import { isPvmHost } from "../vmm/runner.ts";
import { CommandFailed, EXIT, type GlobalOptions, report } from "./context.ts";
import { fmtBytes, parseSize } from "./units.ts";

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Runs memstamp, pauses and resumes it, moves its state into a new VM, and verifies every page. */
export async function demoCommand(
  g: GlobalOptions,
  f: { mem: string; vcpus: string },
): Promise<number> {
  const say = (s: string) => !g.json && console.error(s);
  const spec: MachineSpec = {
    name: "demo",
    guest: "memstamp",
    memSize: parseSize("--mem", f.mem),
    vcpus: Number(f.vcpus),
    memstamp: { pattern: "hotcold", timerHz: 100 },
  };
  if (isPvmHost()) {
    say("note: /dev/kvm is PVM here; memstamp runs its workload in ring 3 at native speed");
  }
  const t0 = performance.now();
  const m = await Machine.create(spec, { serialOut: () => {} });
  await m.vm.start();
  const firstInsn = performance.now() - t0;
  say(
    `1. memstamp: ${fmtBytes(spec.memSize)}, ${spec.vcpus} vCPUs, started in ${
      firstInsn.toFixed(1)
    } ms; stamping every page...`,
  );
  await m.memstamp!.waitStamped(120_000);
  const stamped = performance.now() - t0;
  await sleep(500);
  const pauses: number[] = [];
  for (let i = 0; i < 20; i++) {
    pauses.push(await m.vm.pause());
    m.vm.resume();
    await sleep(10);
  }
  pauses.sort((a, b) => a - b);
  say(
    `2. paused and resumed the busy guest 20 times: median ${pauses[10].toFixed(2)} ms, worst ${
      pauses[19].toFixed(2)
    } ms`,
  );
  await m.vm.pause();
  const tc = performance.now();
  const state = m.save();
  const before = m.memstamp!.statuses();
  const memory = await m.vm.detachMemory();
  const r = Machine.restore({ memory, io: { serialOut: () => {} } }, state);
  await r.vm.start();
  const moveMs = performance.now() - tc;
  say(
    `3. captured the whole machine state and re-installed it in a new KVM VM in ${
      moveMs.toFixed(1)
    } ms`,
  );
  await sleep(500);
  const v = await r.memstamp!.verify();
  const after = r.memstamp!.statuses();
  await r.vm.stop();
  memory.close();
  const ticksContinue = after.every((s, i) => s.ticks > before[i].ticks);
  const result = {
    ok: v.ok && ticksContinue,
    memSize: spec.memSize,
    vcpus: spec.vcpus,
    startMs: firstInsn,
    stampedMs: stamped,
    pauseMs: { p50: pauses[10], max: pauses[19] },
    stateMoveMs: moveMs,
    verify: v,
    ticks: { before: before.map((s) => s.ticks), after: after.map((s) => s.ticks) },
  };
  report(
    g,
    result,
    () =>
      v.ok
        ? `4. OK: all ${v.pages} pages verified in the new VM; timer ticks continued (${
          before.map((s) => s.ticks).join("/")
        } -> ${after.map((s) => s.ticks).join("/")})`
        : `4. BAD: page ${v.bad?.gfn} is ${v.bad?.reason}`,
  );
  if (!result.ok) throw new CommandFailed("demo failed: the restored guest did not verify");
  return EXIT.OK;
}
