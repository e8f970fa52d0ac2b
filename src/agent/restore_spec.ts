/** The machine spec a restore will run under: the checkpoint's, renamed when asked. */
import { resolveCheckpoint } from "../ckpt/store.ts";
import type { MachineSpec } from "../vmm/machine.ts";

/** Reads the checkpoint at `path` and returns its spec, with `name` if given. */
export function targetSpecOf(path: string, name?: string): MachineSpec {
  const spec = structuredClone(resolveCheckpoint(path).manifest.machine.spec);
  if (name) spec.name = name;
  return spec;
}
