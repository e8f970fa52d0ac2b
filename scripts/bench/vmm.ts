/**
 * VMM benchmark: time from `dcres run` to the guest's first instruction, pause/resume latency of a
 * busy 2-vCPU guest, whole-VM state capture and re-install, and the cost of one exit through the
 * Worker loop against (on KVM) a bare KVM_RUN ioctl in the same process. The accelerator is
 * `$DCRES_ACCEL` (default auto).
 */
import type { Accelerator } from "../../src/accel/accel.ts";
import { bareKvmRunUs } from "../../src/accel/kvm/bench.ts";
import { openAccelerator } from "../../src/accel/select.ts";
import { Machine, type MachineSpec } from "../../src/vmm/machine.ts";
import { Vm } from "../../src/vmm/vm.ts";
import { bootMemstamp } from "../../src/vmm/guests/memstamp/boot.ts";
import { SYMBOLS } from "../../src/vmm/guests/memstamp/code.ts";
import { PORT } from "../../src/vmm/guests/memstamp/layout.ts";
import { selfCommand } from "../../src/agent/spawn.ts";
import { line, ms, percentile } from "./stats.ts";

const sleep = (t: number) => new Promise((r) => setTimeout(r, t));
const MiB = 1 << 20;

async function spawnOnce(args: string[]): Promise<{ wallMs: number; stdout: string }> {
  const self = selfCommand(args);
  const t0 = performance.timeOrigin + performance.now();
  const out = await new Deno.Command(self.cmd, { args: self.args, stdout: "piped", stderr: "null" })
    .output();
  return {
    wallMs: performance.timeOrigin + performance.now() - t0,
    stdout: new TextDecoder().decode(out.stdout),
  };
}

async function firstInstruction() {
  const dir = Deno.makeTempDirSync();
  const runs: number[] = [];
  const starts: number[] = [];
  for (let i = 0; i < 5; i++) {
    const t0 = performance.timeOrigin + performance.now();
    const r = await spawnOnce([
      "--state-dir",
      dir,
      "--json",
      "run",
      "--mem",
      "256M",
      "--for",
      "200ms",
    ]);
    const rep = JSON.parse(r.stdout);
    runs.push(rep.firstInsnEpochMs - t0);
    starts.push((await spawnOnce(["--version"])).wallMs);
  }
  return { runToFirstInsnMs: percentile(runs, 50), processStartMs: percentile(starts, 50) };
}

async function pauseResume(accel: Accelerator, memSize: number) {
  const spec: MachineSpec = {
    name: "bench",
    guest: "memstamp",
    memSize,
    vcpus: 2,
    memstamp: { pattern: "random" },
  };
  const m = await Machine.create(spec, { serialOut: () => {} }, accel);
  await m.vm.start();
  await m.memstamp!.waitStamped(120_000);
  const pause: number[] = [];
  const resume: number[] = [];
  const written = () => m.memstamp!.statuses().reduce((a, s) => a + s.written, 0n);
  for (let i = 0; i < 200; i++) {
    pause.push(await m.vm.pause());
    const w0 = written();
    const t0 = performance.now();
    m.vm.resume();
    while (
      written() === w0 && performance.now() - t0 < 1000
    ) { /* spin: the first write after resume */ }
    resume.push(performance.now() - t0);
    await sleep(2);
  }
  await m.vm.pause();
  const tc = performance.now();
  const state = m.save();
  const captureMs = performance.now() - tc;
  const memory = await m.vm.detachMemory();
  const tr = performance.now();
  const r = Machine.restore({ memory, io: { serialOut: () => {} }, accel }, state);
  const reinstallMs = performance.now() - tr;
  await r.vm.start();
  await sleep(200);
  const ok = (await r.memstamp!.verify()).ok;
  await r.vm.stop();
  memory.close();
  return { pause, resume, captureMs, reinstallMs, verifiedAfterRestore: ok };
}

/** A VM whose single vCPU runs `out dx, eax; jmp .` in ring 3 on an unclaimed port. */
function exitLoopVm(accel: Accelerator): Vm {
  const vm = Vm.create({ name: "exits", memSize: 16 * MiB, vcpus: 1 }, {
    accel,
    devices: () => [],
  });
  bootMemstamp(vm, { memSize: 16 * MiB, vcpus: 1, timerHz: 0 });
  vm.memory.view(SYMBOLS.user_entry, 3).set([0xef, 0xeb, 0xfd]);
  const v = vm.vcpus[0];
  const s = v.save();
  v.load({ ...s, regs: { ...s.regs, rdx: BigInt(PORT.EVENT) } });
  return vm;
}

async function exitCost(accel: Accelerator) {
  let bareUs: number | undefined;
  if (accel.kind === "kvm") {
    const bare = exitLoopVm(accel);
    bareUs = bareKvmRunUs(bare.vcpus[0].backend, 200_000);
    await bare.stop();
  }

  const looped = exitLoopVm(accel);
  await looped.start();
  await sleep(200);
  const e0 = looped.vcpus[0].exits;
  const t1 = performance.now();
  await sleep(2000);
  const exits = looped.vcpus[0].exits - e0;
  const workerUs = ((performance.now() - t1) * 1000) / exits;
  await looped.stop();
  return { bareKvmRunUs: bareUs, workerLoopUs: workerUs };
}

/** Runs the VMM benchmark and returns its JSON report. */
export async function benchVmm(): Promise<unknown> {
  const accel = openAccelerator();
  console.log(
    `dcres bench vmm: memstamp on ${accel.capabilities.description} (--accel ${accel.kind})`,
  );
  const fi = await firstInstruction();
  line("dcres run -> first guest instruction (p50)", ms(fi.runToFirstInsnMs), {
    x: fi.runToFirstInsnMs / fi.processStartMs,
    of: `a bare 'dcres --version' process (${ms(fi.processStartMs)})`,
  });
  const pr = await pauseResume(accel, 1024 * MiB);
  const p50 = percentile(pr.pause, 50), p99 = percentile(pr.pause, 99);
  const r50 = percentile(pr.resume, 50), r99 = percentile(pr.resume, 99);
  line("pause, busy 2-vCPU 1 GiB guest (p50)", ms(p50));
  line("pause (p99)", ms(p99), { x: p99 / p50, of: "p50" });
  line("resume to first guest write (p50)", ms(r50));
  line("resume (p99)", ms(r99), { x: r99 / r50, of: "p50" });
  line("whole-VM state capture", ms(pr.captureMs));
  line(`re-install into a new ${accel.kind} VM`, ms(pr.reinstallMs), {
    x: pr.reinstallMs / pr.captureMs,
    of: "capture",
  });
  const ec = await exitCost(accel);
  const bare = ec.bareKvmRunUs;
  if (bare !== undefined) line("bare KVM_RUN exit round trip", `${bare.toFixed(2)} us`);
  line(
    "exit round trip through the Worker loop",
    `${ec.workerLoopUs.toFixed(2)} us`,
    bare !== undefined ? { x: ec.workerLoopUs / bare, of: "bare KVM_RUN" } : undefined,
  );
  return {
    bench: "vmm",
    accel: accel.kind,
    date: new Date().toISOString(),
    firstInstruction: fi,
    pauseMs: { p50, p99 },
    resumeMs: { p50: r50, p99: r99 },
    stateCaptureMs: pr.captureMs,
    stateReinstallMs: pr.reinstallMs,
    verifiedAfterRestore: pr.verifiedAfterRestore,
    exitRoundTripUs: {
      bareKvmRun: bare,
      workerLoop: ec.workerLoopUs,
      ratio: bare !== undefined ? ec.workerLoopUs / bare : undefined,
    },
  };
}
