/** Puts a fresh VM into memstamp's initial state: memory laid out, every vCPU at the ring-3 entry. */
import { MP_STATE } from "../../../ffi/kvm_abi.ts";
import type { Vm } from "../../vm.ts";
import {
  initialLapic,
  initialRegs,
  initialSregs,
  type MemstampOptions,
  resolveOptions,
  setupMemory,
} from "./memstamp.ts";

/** Loads memstamp into `vm` (created with the same memory size and vCPU count). */
export function bootMemstamp(vm: Vm, options: MemstampOptions): void {
  const opts = resolveOptions(options);
  const gdtLimit = setupMemory(vm.memory, opts);
  for (const v of vm.vcpus) {
    const f = v.fd;
    f.setSregs(initialSregs(v.index, f.getSregs(), gdtLimit));
    f.setRegs(initialRegs(v.index, f.getRegs()));
    f.setLapic({ regs: initialLapic(f.getLapic().regs, opts.timerHz) });
    f.setMpState(MP_STATE.RUNNABLE);
  }
}
