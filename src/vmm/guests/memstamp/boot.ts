/** Puts a fresh VM into memstamp's initial state: memory laid out, every vCPU at the ring-3 entry. */
import { MP_STATE } from "../../../accel/cpu_state.ts";
import type { Vm } from "../../vm.ts";
import {
  initialLapic,
  initialRegs,
  initialSregs,
  type MemstampOptions,
  resolveOptions,
  setupMemory,
} from "./memstamp.ts";

/** Loads memstamp into `vm` (created with the same memory size and vCPU count; not started). */
export function bootMemstamp(vm: Vm, options: MemstampOptions): void {
  const opts = resolveOptions(options);
  const gdtLimit = setupMemory(vm.memory, opts);
  for (const v of vm.vcpus) {
    const s = v.save();
    v.load({
      ...s,
      sregs: initialSregs(v.index, s.sregs, gdtLimit),
      regs: initialRegs(v.index, s.regs),
      lapic: initialLapic(s.lapic, opts.timerHz),
      mpState: MP_STATE.RUNNABLE,
    });
  }
}
