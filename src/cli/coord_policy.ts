/**
 * `dcres coord policy set|ls|rm`: a VM's checkpoint policy in the coordinator's store, changed
 * whether or not the coordinator runs; a running leader picks the change up at its next look.
 */
import { CHECKPOINT_MODES, isCheckpointMode } from "../ckpt/manifest.ts";
import { isName, shown } from "../codec/names.ts";
import { type PolicyFields, removePolicy, setPolicy } from "../coord/policy.ts";
import { formatProtection, vmProtection } from "../coord/protection.ts";
import { RecordError } from "../coord/state.ts";
import { openConfiguredState } from "./coord.ts";
import { EXIT, type GlobalOptions, report } from "./context.ts";
import { keepFlag } from "./gc.ts";
import { parseDuration, UsageError } from "./units.ts";

/** Flags of `dcres coord policy set`. */
export interface PolicySetFlags {
  /** The coordinator's config (its store). */
  config: string;
  /** Time between checkpoints, e.g. 60s. */
  every?: string;
  /** stop, precopy or cow. */
  mode?: string;
  /** Incremental checkpoints (false with --no-incremental). */
  incremental?: boolean;
  /** One checkpoint in this many is full. */
  fullEvery?: string;
  /** Generations kept. */
  keep?: string;
  /** Copies of every fragment. */
  replicas?: string;
}

function vmArg(vm: string): string {
  if (!isName("vm", vm)) throw new UsageError(`${shown(vm)} is not a VM name`);
  return vm;
}

function count(flag: string, text: string | undefined, min: number): number | undefined {
  if (text === undefined) return undefined;
  const n = Number(text);
  if (!/^\d+$/.test(text) || !Number.isSafeInteger(n) || n < min) {
    throw new UsageError(`${flag} ${text}: give a whole number, at least ${min}`);
  }
  return n;
}

/** Sets (or changes) a VM's policy: flags left out keep their value, or take the defaults. */
export async function policySet(g: GlobalOptions, vm: string, f: PolicySetFlags): Promise<number> {
  if (f.mode !== undefined && !isCheckpointMode(f.mode)) {
    throw new UsageError(`--mode ${f.mode}: use one of: ${CHECKPOINT_MODES.join(", ")}`);
  }
  const fields: PolicyFields = {
    everyMs: f.every === undefined ? undefined : Math.round(parseDuration("--every", f.every)),
    mode: f.mode as PolicyFields["mode"],
    incremental: f.incremental,
    fullEvery: count("--full-every", f.fullEvery, 0),
    keep: keepFlag(f.keep),
    replicas: count("--replicas", f.replicas, 1),
  };
  const state = await openConfiguredState(f.config, true);
  try {
    const p = await setPolicy(state, vmArg(vm), fields).catch((e) => {
      if (e instanceof RangeError) throw new UsageError(`${e.message}: give --every, e.g. 60s`);
      if (e instanceof RecordError) throw new UsageError(`policy of ${vm}: ${e.message}`);
      throw e;
    });
    report(g, p, () =>
      `policy of ${vm} set: ${
        formatProtection({ vm, policy: p, checkpoints: 0 })
          .replace(/^vm \S+: /, "").replace(/; no checkpoint yet$/, "")
      }`);
  } finally {
    await state.close();
  }
  return EXIT.OK;
}

/** Lists every VM's policy with its recovery point. */
export async function policyLs(g: GlobalOptions, f: { config: string }): Promise<number> {
  const state = await openConfiguredState(f.config);
  try {
    const vms = (await vmProtection(state, Date.now())).filter((p) => p.policy);
    report(g, vms, () => vms.length ? vms.map(formatProtection).join("\n") : "no policies");
  } finally {
    await state.close();
  }
  return EXIT.OK;
}

/** Removes a VM's policy: it is checkpointed no more; its checkpoints and catalog stay. */
export async function policyRm(
  g: GlobalOptions,
  vm: string,
  f: { config: string },
): Promise<number> {
  const state = await openConfiguredState(f.config);
  try {
    if (!(await removePolicy(state, vmArg(vm)))) {
      throw new UsageError(`${vm} has no policy; see 'dcres coord policy ls'`);
    }
    report(g, { vm, removed: true }, () => `policy of ${vm} removed`);
  } finally {
    await state.close();
  }
  return EXIT.OK;
}
