/**
 * VMM benchmark: time from `dcres run` to the guest's first instruction, pause/resume latency of a
 * busy 2-vCPU guest, whole-VM state capture and re-install, and the cost of one exit through the
 * Worker loop against a bare KVM_RUN ioctl in the same process.
 */
import * as libc from "../../src/ffi/libc.ts";
import { IOCTL } from "../../src/ffi/kvm_abi.ts";
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

async function pauseResume(memSize: number) {
  const spec: MachineSpec = {
    name: "bench",
    guest: "memstamp",
    memSize,
    vcpus: 2,
    memstamp: { pattern: "random" },
  };
  const m = await Machine.create(spec, { serialOut: () => {} });
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
  const r = Machine.restore({ memory, io: { serialOut: () => {} } }, state);
  const reinstallMs = performance.now() - tr;
  await r.vm.start();
  await sleep(200);
  const ok = (await r.memstamp!.verify()).ok;
  await r.vm.stop();
  memory.close();
  return { pause, resume, captureMs, reinstallMs, verifiedAfterRestore: ok };
}

/** A VM whose single vCPU runs `out dx, eax; jmp .` in ring 3 on an unclaimed port. */
function exitLoopVm(): Vm {
  const vm = Vm.create({ name: "exits", memSize: 16 * MiB, vcpus: 1 }, { devices: () => [] });
  bootMemstamp(vm, { memSize: 16 * MiB, vcpus: 1, timerHz: 0 });
  vm.memory.view(SYMBOLS.user_entry, 3).set([0xef, 0xeb, 0xfd]);
  const f = vm.vcpus[0].fd;
  f.setRegs({ ...f.getRegs(), rdx: BigInt(PORT.EVENT) });
  return vm;
}

async function exitCost() {
  const bare = exitLoopVm();
  const n = 200_000;
  const fd = bare.vcpus[0].fd.fd;
  for (let i = 0; i < 1000; i++) libc.ioctlRaw(fd, IOCTL.RUN, 0n);
  const t0 = performance.now();
  for (let i = 0; i < n; i++) libc.ioctlRaw(fd, IOCTL.RUN, 0n);
  const bareUs = ((performance.now() - t0) * 1000) / n;
  await bare.stop();

  const looped = exitLoopVm();
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
  console.log("dcres bench vmm: memstamp on this host's /dev/kvm");
  const fi = await firstInstruction();
  line("dcres run -> first guest instruction (p50)", ms(fi.runToFirstInsnMs), {
    x: fi.runToFirstInsnMs / fi.processStartMs,
    of: `a bare 'dcres --version' process (${ms(fi.processStartMs)})`,
  });
  const pr = await pauseResume(1024 * MiB);
  const p50 = percentile(pr.pause, 50), p99 = percentile(pr.pause, 99);
  const r50 = percentile(pr.resume, 50), r99 = percentile(pr.resume, 99);
  line("pause, busy 2-vCPU 1 GiB guest (p50)", ms(p50));
  line("pause (p99)", ms(p99), { x: p99 / p50, of: "p50" });
  line("resume to first guest write (p50)", ms(r50));
  line("resume (p99)", ms(r99), { x: r99 / r50, of: "p50" });
  line("whole-VM state capture", ms(pr.captureMs));
  line("re-install into a new KVM VM", ms(pr.reinstallMs), {
    x: pr.reinstallMs / pr.captureMs,
    of: "capture",
  });
  const ec = await exitCost();
  line("bare KVM_RUN exit round trip", `${ec.bareKvmRunUs.toFixed(2)} us`);
  line("exit round trip through the Worker loop", `${ec.workerLoopUs.toFixed(2)} us`, {
    x: ec.workerLoopUs / ec.bareKvmRunUs,
    of: "bare KVM_RUN",
  });
  return {
    bench: "vmm",
    date: new Date().toISOString(),
    firstInstruction: fi,
    pauseMs: { p50, p99 },
    resumeMs: { p50: r50, p99: r99 },
    stateCaptureMs: pr.captureMs,
    stateReinstallMs: pr.reinstallMs,
    verifiedAfterRestore: pr.verifiedAfterRestore,
    exitRoundTripUs: {
      bareKvmRun: ec.bareKvmRunUs,
      workerLoop: ec.workerLoopUs,
      ratio: ec.workerLoopUs / ec.bareKvmRunUs,
    },
  };
}
