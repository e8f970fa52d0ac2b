/**
 * VMM benchmark: time from `dcres run` to the guest's first instruction; on the run's accelerator
 * (`$DCRES_ACCEL`, default auto) and, on a KVM host, on the emulated CPU too: memstamp's page write
 * rate against raw host page writes in the same run, pause/resume latency of a busy 2-vCPU guest,
 * whole-VM state capture and re-install, and the cost of one port I/O exit; on KVM only, one exit
 * through the Worker loop against a bare KVM_RUN ioctl in the same process.
 */
import type { Accelerator } from "../../src/accel/accel.ts";
import { bareKvmRunUs } from "../../src/accel/kvm/bench.ts";
import { Vm } from "../../src/vmm/vm.ts";
import { bootMemstamp } from "../../src/vmm/guests/memstamp/boot.ts";
import { SYMBOLS } from "../../src/vmm/guests/memstamp/code.ts";
import { PORT } from "../../src/vmm/guests/memstamp/layout.ts";
import { selfCommand } from "../../src/agent/spawn.ts";
import { BenchAccel } from "./accel.ts";
import { line, ms, percentile, ratio } from "./stats.ts";
import { busyGuest, p50p99, PAUSE_AIM_MS, portIoExit } from "./vmm_guest.ts";

const sleep = (t: number) => new Promise((r) => setTimeout(r, t));
const MiB = 1 << 20;
const FIRST_INSN_MEM = "256M";
const CYCLES = 200;

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

async function firstInstruction(ba: BenchAccel) {
  const dir = Deno.makeTempDirSync();
  const runs: number[] = [];
  const starts: number[] = [];
  const run = ["--state-dir", dir, "--json", "run", "--accel", ba.kind, "--mem", FIRST_INSN_MEM];
  for (let i = 0; i < 5; i++) {
    const t0 = performance.timeOrigin + performance.now();
    const r = await spawnOnce([...run, "--for", "200ms"]);
    const rep = JSON.parse(r.stdout);
    runs.push(rep.firstInsnEpochMs - t0);
    starts.push((await spawnOnce(["--version"])).wallMs);
  }
  Deno.removeSync(dir, { recursive: true });
  return {
    mem: FIRST_INSN_MEM,
    runToFirstInsnMs: percentile(runs, 50),
    processStartMs: percentile(starts, 50),
  };
}

/** The guest figures on one accelerator, printed as they come. */
async function guestFigures(ba: BenchAccel) {
  const memSize = ba.pick({ full: 1024 * MiB, emu: 256 * MiB });
  const windowMs = ba.pick({ full: 2000, emu: 3000 });
  console.log(
    `\non ${ba.kind} (${ba.info.description}): busy memstamp guest of ${memSize / MiB} MiB, ` +
      `2 vCPUs writing random pages of their whole share`,
  );
  const g = await busyGuest(ba.accel, { memSize, vcpus: 2 }, CYCLES, windowMs);
  const rate = g.rate.pagesPerSecPerVcpu;
  const pps = (x: number) => `${x.toFixed(0)} pages/s`;
  console.log(
    `stamped ${memSize / MiB} MiB in ${(g.stampMs / 1000).toFixed(1)} s; host references: one ` +
      `thread writing 4 KiB pages at random over ${g.host.bufferBytes / MiB} MiB (a vCPU's share)`,
  );
  line("host memset of a 4 KiB page (reference)", pps(g.host.memsetPagesPerSec));
  line("host memcpy of a 4 KiB page (reference)", pps(g.host.memcpyPagesPerSec), {
    x: g.host.memcpyPagesPerSec / g.host.memsetPagesPerSec,
    of: "memset",
  });
  line(ba.cpu("guest page write rate per vCPU"), pps(rate), {
    x: rate / g.host.memcpyPagesPerSec,
    of: `host memcpy (the host is ${(g.host.memcpyPagesPerSec / rate).toFixed(0)}x faster; ` +
      `${ratio(rate / g.host.memsetPagesPerSec)}x memset)`,
  });
  const pause = p50p99(g.pause), resume = p50p99(g.resume);
  line(ba.cpu(`pause, busy 2-vCPU guest, ${CYCLES} cycles (p50)`), ms(pause.p50));
  line(ba.cpu("pause (p99)"), ms(pause.p99), { x: pause.p99 / pause.p50, of: "p50" });
  line(ba.cpu("resume to first guest write (p50)"), ms(resume.p50));
  line(ba.cpu("resume (p99)"), ms(resume.p99), { x: resume.p99 / resume.p50, of: "p50" });
  const aimMet = pause.p99 < PAUSE_AIM_MS && resume.p99 < PAUSE_AIM_MS;
  console.log(
    `aim: pause and resume p99 under ${PAUSE_AIM_MS} ms on ${ba.kind}: ` +
      `${aimMet ? "met" : "NOT met"} (max pause ${ms(pause.max)}, max resume ${ms(resume.max)})`,
  );
  line(ba.cpu("whole-VM state capture"), ms(g.captureMs));
  line(ba.cpu(`re-install into a new ${ba.kind} VM`), ms(g.reinstallMs), {
    x: g.reinstallMs / g.captureMs,
    of: `capture (guest verify after it: ${g.verifiedAfterRestore ? "ok" : "FAILED"})`,
  });

  const pioMem = ba.pick({ full: 256 * MiB, emu: 64 * MiB });
  const pioWs = ba.pick({ full: 64 * MiB, emu: 16 * MiB });
  const rounds = ba.pick({ full: 4, emu: 6 });
  const pioWindow = ba.pick({ full: 1000, emu: 1500 });
  const p = await portIoExit(ba.accel, pioMem, pioWs, rounds, pioWindow);
  console.log(
    `port I/O exit: 1-vCPU memstamp guest of ${pioMem / MiB} MiB writing ${pioWs / MiB} MiB at ` +
      `random, its OUT to port 0x${PORT.EVENT.toString(16)} after every page or every ` +
      `${p.rare.reportInterval}, alternating in ${2 * rounds} windows of ${pioWindow} ms`,
  );
  line(ba.cpu(`write rate, an OUT every ${p.rare.reportInterval} pages`), pps(p.rare.pagesPerSec));
  line(ba.cpu("write rate, an OUT after every page"), pps(p.every.pagesPerSec), {
    x: p.every.pagesPerSec / p.rare.pagesPerSec,
    of: "with almost no OUTs",
  });
  const sorted = [...p.pairedExitUs].sort((a, b) => a - b);
  line(ba.cpu("one port I/O exit (OUT, derived)"), `${p.exitUs.toFixed(2)} us`, {
    x: p.exitUs / p.pageUs,
    of: `a page write (${p.pageUs.toFixed(2)} us); per window pair median ` +
      `${percentile(sorted, 50).toFixed(2)}, ${sorted[0].toFixed(2)}..` +
      `${sorted[sorted.length - 1].toFixed(2)} us`,
  });
  console.log(
    `  per page: ${p.every.outsPerPage.toFixed(3)} vs ${p.rare.outsPerPage.toFixed(5)} OUTs ` +
      `forwarded to the VMM thread, ${p.every.exitsPerPage.toFixed(3)} vs ` +
      `${p.rare.exitsPerPage.toFixed(5)} run-loop exits` +
      (ba.kind === "emu"
        ? " (on emu an OUT is the shim's port hook calling into the Worker's JavaScript, which " +
          "posts it to the VMM thread; uc_emu_start does not return)"
        : " (on KVM every OUT is a KVM_RUN exit the Worker forwards)"),
  );
  return {
    accel: ba.info,
    busyGuest: {
      memBytes: memSize,
      vcpus: 2,
      stampMs: g.stampMs,
      writeRate: g.rate,
      hostPageWrites: g.host,
      writeRateVsHostMemcpy: rate / g.host.memcpyPagesPerSec,
      writeRateVsHostMemset: rate / g.host.memsetPagesPerSec,
      cycles: CYCLES,
      pauseMs: pause,
      resumeMs: resume,
      aimP99Ms: PAUSE_AIM_MS,
      aimMet,
      stateCaptureMs: g.captureMs,
      stateReinstallMs: g.reinstallMs,
      verifiedAfterRestore: g.verifiedAfterRestore,
    },
    portIoExit: p,
  };
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

/** KVM only: a bare KVM_RUN round trip and one exit through the Worker loop. */
async function exitCost(accel: Accelerator) {
  const bare = exitLoopVm(accel);
  const bareUs = bareKvmRunUs(bare.vcpus[0].backend, 200_000);
  await bare.stop();

  const looped = exitLoopVm(accel);
  await looped.start();
  await sleep(200);
  const e0 = looped.vcpus[0].exits;
  const t1 = performance.now();
  await sleep(2000);
  const exits = looped.vcpus[0].exits - e0;
  const workerUs = ((performance.now() - t1) * 1000) / exits;
  await looped.stop();
  return { bareKvmRun: bareUs, workerLoop: workerUs, ratio: workerUs / bareUs };
}

/** Runs the VMM benchmark and returns its JSON report. */
export async function benchVmm(): Promise<unknown> {
  const ba = BenchAccel.open();
  console.log(`dcres bench vmm: memstamp, ${ba.describe()}`);
  const fi = await firstInstruction(ba);
  line(ba.cpu(`dcres run -> first guest instruction, ${fi.mem} (p50)`), ms(fi.runToFirstInsnMs), {
    x: fi.runToFirstInsnMs / fi.processStartMs,
    of: `a bare 'dcres --version' process (${ms(fi.processStartMs)})`,
  });
  const guests = [await guestFigures(ba)];
  if (ba.kind === "kvm") {
    const emu = BenchAccel.probe("emu", "beside KVM's figures on a host that has both");
    if (typeof emu === "string") console.log(`\nemulated CPU figures skipped: ${emu}`);
    else guests.push(await guestFigures(emu));
  }

  console.log("");
  let exitRoundTripUs: Awaited<ReturnType<typeof exitCost>> | { skipped: string };
  if (ba.kind === "kvm") {
    const ec = await exitCost(ba.accel);
    exitRoundTripUs = ec;
    line("bare KVM_RUN exit round trip [kvm]", `${ec.bareKvmRun.toFixed(2)} us`);
    line("exit round trip through the Worker loop [kvm]", `${ec.workerLoop.toFixed(2)} us`, {
      x: ec.ratio,
      of: "bare KVM_RUN",
    });
  } else {
    const why = `this run is on ${ba.kind}, which has no KVM_RUN to time bare` +
      ` (and an OUT to an unclaimed port is dropped in the shim's C hook without leaving` +
      ` uc_emu_start, so the tight OUT loop has no exit to time either); the port I/O exit above` +
      ` is its counterpart`;
    exitRoundTripUs = { skipped: why };
    console.log(`bare KVM_RUN and Worker-loop exit round trips skipped: ${why}`);
  }
  const primary = guests[0].busyGuest;
  return {
    bench: "vmm",
    accel: ba.info,
    date: new Date().toISOString(),
    firstInstruction: fi,
    pauseMs: primary.pauseMs,
    resumeMs: primary.resumeMs,
    stateCaptureMs: primary.stateCaptureMs,
    stateReinstallMs: primary.stateReinstallMs,
    verifiedAfterRestore: primary.verifiedAfterRestore,
    guests,
    exitRoundTripUs,
  };
}
