/**
 * How well each VM is protected, from the store alone: its policy and its recovery point (the
 * newest committed checkpoint in the catalog) and that point's age. Shown by `coord status` and
 * `/metrics`.
 */
import type { CoordState, Policy } from "./state.ts";

/** One VM's protection. */
export interface VmProtection {
  /** The VM. */
  vm: string;
  /** Its policy, if it has one. */
  policy?: Policy;
  /** Its newest committed checkpoint, if any. */
  newest?: { id: string; generation: number; timeMs: number };
  /** Ms from that checkpoint's recovery point to `now`. */
  recoveryPointAgeMs?: number;
  /** Checkpoints of it in the catalog. */
  checkpoints: number;
}

/** Every VM with a policy or a catalogued checkpoint, by name, as of wall-clock `now`. */
export async function vmProtection(state: CoordState, now: number): Promise<VmProtection[]> {
  const out = new Map<string, VmProtection>();
  const of = (vm: string) => {
    const p = out.get(vm) ?? { vm, checkpoints: 0 };
    out.set(vm, p);
    return p;
  };
  for (const { value } of await state.list("policy")) of(value.vm).policy = value;
  for (const { value: c } of await state.list("checkpoint")) {
    const p = of(c.vm);
    p.checkpoints++;
    if (!p.newest || c.timeMs > p.newest.timeMs) {
      p.newest = { id: c.id, generation: c.generation, timeMs: c.timeMs };
      p.recoveryPointAgeMs = Math.max(0, now - c.timeMs);
    }
  }
  return [...out.values()].sort((a, b) => a.vm < b.vm ? -1 : a.vm > b.vm ? 1 : 0);
}

/** One line for a person: `vm VM: every 60s cow incremental (full every 10), keep 5, 2 copies; ...`. */
export function formatProtection(p: VmProtection): string {
  const secs = (ms: number) => `${(ms / 1000).toFixed(1)}s`;
  const q = p.policy;
  const policy = q
    ? `every ${secs(q.everyMs)} ${q.mode}${
      q.incremental ? ` incremental${q.fullEvery ? ` (full every ${q.fullEvery})` : ""}` : " full"
    }, keep ${q.keep}, ${q.replicas} ${q.replicas === 1 ? "copy" : "copies"}`
    : "no policy";
  const point = p.newest
    ? `recovery point ${
      secs(p.recoveryPointAgeMs!)
    } old (${p.newest.id}, generation ${p.newest.generation}), ${p.checkpoints} catalogued`
    : "no checkpoint yet";
  return `vm ${p.vm}: ${policy}; ${point}`;
}
