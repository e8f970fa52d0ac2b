/// <reference lib="deno.worker" />
/**
 * One emulated vCPU's thread: runs guest code in Unicorn until the shim stops it (a kick, the
 * timer, an exception), forwards claimed port accesses to the VMM thread from the shim's port
 * hooks, delivers timer interrupts, and at every park leaves a snapshot of its state for `save()`.
 */
import { EMU_IO_CALLBACK, loadEmuShim } from "../../ffi/emu_shim.ts";
import { RunStateWord, SLOT, type VcpuInit, type VcpuMessage } from "../vcpu_control.ts";
import { EmuCpu } from "./emu_cpu.ts";
import { type EmuWorkerInit, writeSnapshot } from "./snapshot.ts";

/** Idle wait while halted with the timer armed, so a kick is still seen soon. */
const HALT_POLL_MS = 1;

function post(m: VcpuMessage) {
  self.postMessage(m);
}

function portCallback(ctl: Int32Array, index: number): Deno.UnsafeCallback<typeof EMU_IO_CALLBACK> {
  return new Deno.UnsafeCallback(EMU_IO_CALLBACK, (dir, port, size, value) => {
    Atomics.add(ctl, SLOT.FORWARDED, 1);
    if (dir === 1) {
      post({ t: "out", index, port, size, value });
      return 0;
    }
    Atomics.store(ctl, SLOT.IN_READY, 0);
    post({ t: "in", index, port, size });
    while (Atomics.load(ctl, SLOT.IN_READY) === 0) Atomics.wait(ctl, SLOT.IN_READY, 0, 1000);
    return Atomics.load(ctl, SLOT.IN_VALUE) >>> 0;
  });
}

/** Runs until the vCPU stops for good; returns the message that says why. */
function runLoop(init: VcpuInit, cpu: EmuCpu, snapshot: SharedArrayBuffer): VcpuMessage {
  const ctl = new Int32Array(init.control);
  const state = new RunStateWord(init.control);
  const { index } = init;
  for (;;) {
    cpu.clearKick();
    const st = state.get();
    if (st !== "running") {
      if (st === "stop-requested") {
        writeSnapshot(snapshot, cpu.save());
        return { t: "stopped", index };
      }
      if (st === "pause-requested") {
        writeSnapshot(snapshot, cpu.save());
        state.move("paused");
      }
      state.waitWhile("paused");
      continue;
    }
    const timer = cpu.timer;
    timer.poll(cpu.now());
    if (timer.pending && cpu.deliver(timer.vector!)) timer.delivered();
    const stop = cpu.run(timer.pending ? cpu.now() + 20_000n : timer.deadline);
    Atomics.add(ctl, SLOT.EXITS, 1);
    if (stop.kind === "fault") {
      writeSnapshot(snapshot, cpu.save());
      return { t: "error", index, reason: stop.reason };
    }
    if (stop.kind === "halt") {
      if (timer.deadline === 0n || !cpu.interruptsEnabled) {
        writeSnapshot(snapshot, cpu.save());
        return { t: "halted", index, reason: "the guest halted with no interrupt to wake it" };
      }
      state.waitWhile("running", HALT_POLL_MS);
    }
  }
}

self.onmessage = (e: MessageEvent<VcpuInit>) => {
  const init = e.data;
  const b = init.backend as unknown as EmuWorkerInit;
  const ctl = new Int32Array(init.control);
  const state = new RunStateWord(init.control);
  let cpu: EmuCpu;
  const io = portCallback(ctl, init.index);
  try {
    cpu = new EmuCpu({
      shim: loadEmuShim(b.shimPath),
      ramAddr: b.ramAddr,
      ramSize: b.ramSize,
      vmAddr: b.vmAddr,
      kick: b.kick,
      claimedPorts: init.claimedPorts,
      io,
    });
    cpu.load(b.state);
    writeSnapshot(b.snapshot, cpu.save());
  } catch (err) {
    state.move("stopped");
    post({ t: "error", index: init.index, reason: (err as Error).message });
    self.close();
    return;
  }
  post({ t: "ready", index: init.index, info: {} });
  let last: VcpuMessage;
  try {
    last = runLoop(init, cpu, b.snapshot);
  } catch (err) {
    last = { t: "error", index: init.index, reason: (err as Error).message };
  }
  // Release the engine before publishing STOPPED: the VMM may terminate this Worker, free the
  // VM's dirty bytes and open new engines as soon as it sees that state.
  cpu.close();
  io.close();
  state.move("stopped");
  post(last);
  self.close();
};
