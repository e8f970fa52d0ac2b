/**
 * `dcres vmm` (internal): the process a detached VM lives in, started by `run --detach` or an
 * agent, which pass the accelerator (`--accel`) it runs on.
 */
import { getLogger } from "@logtape/logtape";
import type { MachineSpec } from "../vmm/machine.ts";
import { type HostOptions, hostVm } from "../vmm_process/host_vm.ts";
import { toJson } from "../vmm/control/protocol.ts";
import { EXIT, type GlobalOptions, stateDirOf } from "./context.ts";
import { UsageError } from "./units.ts";
import { openAcceleratorFlag } from "./accel_flag.ts";

/** Flags of `dcres vmm`. */
export interface VmmFlags {
  spec: string;
  forMs?: string;
  restore?: string;
  lazy?: boolean;
  split?: string;
  accel?: string;
}

/** Runs one VM until it stops; logs structured lines to stderr (the VM's log file). */
export async function vmmCommand(
  g: GlobalOptions,
  f: VmmFlags,
): Promise<number> {
  let spec: MachineSpec;
  try {
    spec = JSON.parse(f.spec);
  } catch {
    throw new UsageError("--spec: not valid JSON (dcres vmm is internal; use dcres run --detach)");
  }
  const log = getLogger(["dcres", "vmm", spec.name]);
  const accel = openAcceleratorFlag(f.accel);
  log.info("starting {name}: {guest}, {memSize} bytes, {vcpus} vCPUs on {accel}", {
    ...spec,
    accel: accel.kind,
  });
  const target = f.restore
    ? { kind: "restore" as const, path: f.restore, name: spec.name, lazy: !!f.lazy }
    : { kind: "boot" as const, spec };
  let split: HostOptions["split"];
  try {
    split = f.split ? JSON.parse(f.split) : undefined;
  } catch {
    throw new UsageError(
      "--split: not valid JSON (dcres vmm is internal; use dcres vm start --sub)",
    );
  }
  const rep = await hostVm(target, {
    accel,
    split,
    stateDir: stateDirOf(g),
    forMs: f.forMs ? Number(f.forMs) : undefined,
    onRestore: (t) => log.info("restored: {times}", { times: toJson(t) }),
  });
  log.info("stopped: {report}", { report: toJson(rep) });
  return rep.exit.reason === "error" ? EXIT.FAILURE : EXIT.OK;
}
