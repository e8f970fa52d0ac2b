/**
 * Checkpoint policies as people give them (the config's `policies`, `dcres coord policy set`): the
 * defaults of what they leave out, checked by the store's own record rules, and written to the
 * store, where the scheduler picks them up whether or not a coordinator runs at the time.
 */
import { checkOps } from "./records.ts";
import type { CoordState, Policy, Versioned } from "./state.ts";

/** What a policy is when only its period is given. */
export const POLICY_DEFAULTS: Omit<Policy, "vm" | "everyMs"> = {
  mode: "cow",
  incremental: false,
  fullEvery: 0,
  keep: 10,
  // A copy on another host, so a restore after the host's failure finds one.
  replicas: 2,
};

/** A policy's fields as given: any may be left out of a change to an existing policy. */
export type PolicyFields = Partial<Omit<Policy, "vm">>;

/**
 * The policy of `vm` from `fields`, the rest from `base` (the policy it changes) or the defaults;
 * checked by the store's rules (throws RecordError naming the field). A new one needs `everyMs`.
 */
export function makePolicy(vm: string, fields: PolicyFields, base?: Policy): Policy {
  const everyMs = fields.everyMs ?? base?.everyMs;
  if (everyMs === undefined) throw new RangeError(`the policy of ${vm} needs a period (every)`);
  const p: Policy = { ...POLICY_DEFAULTS, ...base, ...defined(fields), vm, everyMs };
  checkOps([{ op: "put", kind: "policy", value: p }]);
  return p;
}

function defined(f: PolicyFields): PolicyFields {
  return Object.fromEntries(Object.entries(f).filter(([, x]) => x !== undefined));
}

/**
 * Sets `vm`'s policy in `state` from `fields` over what it has now; returns it. The write names the
 * revision it read, so two changes at once do not silently lose one (StaleRevisionError).
 */
export async function setPolicy(
  state: CoordState,
  vm: string,
  fields: PolicyFields,
): Promise<Policy> {
  const old: Versioned<Policy> | undefined = await state.get("policy", vm);
  const p = makePolicy(vm, fields, old?.value);
  await state.commit([{ op: "put", kind: "policy", value: p, expect: old?.rev ?? 0 }]);
  return p;
}

/** Removes `vm`'s policy; false when it had none. Its catalog stays (its checkpoints do). */
export async function removePolicy(state: CoordState, vm: string): Promise<boolean> {
  const old = await state.get("policy", vm);
  if (!old) return false;
  await state.commit([{ op: "delete", kind: "policy", key: vm, expect: old.rev }]);
  return true;
}
