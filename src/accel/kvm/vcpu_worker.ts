/// <reference lib="deno.worker" />
/**
 * One vCPU's thread: a synchronous KVM_RUN loop (a thread-pool hop per call would cost 5x), port
 * accesses to claimed ports forwarded to the VMM thread, and pause/stop through the control word.
 */
import { Errno } from "../../ffi/errors.ts";
import * as libc from "../../ffi/libc.ts";
import {
  EXIT,
  EXIT_IO,
  IOCTL,
  KVM_RUN_EXIT_UNION,
  kvmRunHeader,
  kvmRunIo,
} from "../../ffi/kvm_abi.ts";
import { RunStateWord, SLOT, type VcpuInit, type VcpuMessage } from "../vcpu_control.ts";
import type { KvmWorkerInit } from "./kvm_vcpu.ts";

const IMMEDIATE_EXIT = kvmRunHeader.offsets.immediate_exit;
const EXIT_REASON = kvmRunHeader.offsets.exit_reason;
const IO = KVM_RUN_EXIT_UNION;

function post(m: VcpuMessage) {
  self.postMessage(m);
}

function runLoop(init: VcpuInit) {
  const { fd, runAddr, runSize } = init.backend as unknown as KvmWorkerInit;
  const ctl = new Int32Array(init.control);
  const state = new RunStateWord(init.control);
  const run = libc.bytesAt(libc.ptrOf(runAddr), runSize);
  const dv = new DataView(run.buffer);
  const claimed = new Uint8Array(65536);
  for (const p of init.claimedPorts) claimed[p] = 1;
  const { index } = init;

  for (;;) {
    // Clear the kick before reading the state: a kick that lands after this is seen by KVM_RUN.
    Atomics.store(run, IMMEDIATE_EXIT, 0);
    const st = state.get();
    if (st !== "running") {
      if (st === "stop-requested") {
        state.move("stopped");
        post({ t: "stopped", index });
        return;
      }
      if (st === "pause-requested") state.move("paused");
      state.waitWhile("paused");
      continue;
    }
    const r = libc.ioctlRaw(fd, IOCTL.RUN, 0n);
    if (r < 0) {
      if (-r === Errno.EINTR || -r === Errno.EAGAIN) continue;
      fail(state, index, `KVM_RUN failed: errno ${-r}`);
      return;
    }
    Atomics.add(ctl, SLOT.EXITS, 1);
    const reason = dv.getUint32(EXIT_REASON, true);
    if (reason === EXIT.IO) {
      const dir = dv.getUint8(IO + kvmRunIo.offsets.direction);
      const size = dv.getUint8(IO + kvmRunIo.offsets.size);
      const port = dv.getUint16(IO + kvmRunIo.offsets.port, true);
      const count = dv.getUint32(IO + kvmRunIo.offsets.count, true);
      const off = Number(dv.getBigUint64(IO + kvmRunIo.offsets.data_offset, true));
      for (let k = 0; k < count; k++) {
        const at = off + k * size;
        if (dir === EXIT_IO.OUT) {
          if (!claimed[port]) continue;
          const value = size === 1
            ? dv.getUint8(at)
            : size === 2
            ? dv.getUint16(at, true)
            : dv.getUint32(at, true);
          Atomics.add(ctl, SLOT.FORWARDED, 1);
          post({ t: "out", index, port, size, value });
        } else {
          let value = 0xffffffff;
          if (claimed[port]) {
            Atomics.store(ctl, SLOT.IN_READY, 0);
            Atomics.add(ctl, SLOT.FORWARDED, 1);
            post({ t: "in", index, port, size });
            while (Atomics.load(ctl, SLOT.IN_READY) === 0) {
              Atomics.wait(ctl, SLOT.IN_READY, 0, 1000);
            }
            value = Atomics.load(ctl, SLOT.IN_VALUE) >>> 0;
          }
          if (size === 1) dv.setUint8(at, value & 0xff);
          else if (size === 2) dv.setUint16(at, value & 0xffff, true);
          else dv.setUint32(at, value >>> 0, true);
        }
      }
      continue;
    }
    if (reason === EXIT.MMIO || reason === EXIT.INTR || reason === EXIT.IRQ_WINDOW_OPEN) {
      // No MMIO devices outside the kernel's irqchip: reads see all ones (the run area keeps 0xff).
      continue;
    }
    if (reason === EXIT.SHUTDOWN || reason === EXIT.SYSTEM_EVENT) {
      state.move("stopped");
      post({ t: "shutdown", index, reason: exitName(reason) });
      return;
    }
    if (reason === EXIT.HLT) {
      // The in-kernel LAPIC keeps a HLT that an interrupt can end inside KVM_RUN; one that reaches
      // here has nothing that will ever wake it. The vCPU stops; the guest did not shut down.
      state.move("stopped");
      post({ t: "halted", index, reason: `${exitName(reason)}: nothing can wake the vCPU` });
      return;
    }
    fail(state, index, `unexpected exit ${exitName(reason)}`);
    return;
  }
}

function fail(state: RunStateWord, index: number, reason: string) {
  state.move("stopped");
  post({ t: "error", index, reason });
}

function exitName(reason: number): string {
  const name = Object.entries(EXIT).find(([, v]) => v === reason)?.[0];
  return name ? `KVM_EXIT_${name}` : `exit reason ${reason}`;
}

self.onmessage = (e: MessageEvent<VcpuInit>) => {
  const init = e.data;
  // The signal listener makes SIGUSR2 harmless here; it only needs to interrupt KVM_RUN.
  Deno.addSignalListener("SIGUSR2", () => {});
  // The VMM thread kicks this thread out of KVM_RUN with a signal at its pthread id.
  post({ t: "ready", index: init.index, info: { thread: libc.pthreadSelf() } });
  runLoop(init);
  self.close();
};
