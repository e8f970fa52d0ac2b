/**
 * Picks the accelerator a VM runs on: `kvm` when asked or when `/dev/kvm` opens, `emu` (the
 * emulated CPU) when asked or when KVM cannot be used, saying so once on stderr.
 */
import {
  type AccelChoice,
  type Accelerator,
  type AccelKind,
  AccelUnavailableError,
  parseAccelChoice,
} from "./accel.ts";
import { openEmuAccelerator } from "./emu/emu_accel.ts";
import { kvmUnavailableReason as kvmProbe, openKvmAccelerator } from "./kvm/kvm_accel.ts";

/** The environment variable that chooses the accelerator when no `--accel` is given. */
export const ACCEL_ENV = "DCRES_ACCEL";

const opened = new Map<AccelKind, Accelerator>();
let autoNoted = false;

/** The choice from `--accel` if given, else `DCRES_ACCEL`, else `auto`. */
export function accelChoice(flag?: string): AccelChoice {
  if (flag !== undefined) return parseAccelChoice(flag);
  const env = Deno.env.get(ACCEL_ENV);
  return env ? parseAccelChoice(env, ACCEL_ENV) : "auto";
}

/** Why KVM cannot be used here, or undefined when `/dev/kvm` opens (see the KVM backend's probe). */
export function kvmUnavailableReason(): string | undefined {
  return kvmProbe();
}

/** Opens (once per process) the accelerator for `choice`; `auto` prefers KVM. */
export function openAccelerator(choice: AccelChoice = accelChoice()): Accelerator {
  let kind: AccelKind;
  if (choice === "auto") {
    const why = kvmUnavailableReason();
    kind = why === undefined ? "kvm" : "emu";
    if (why !== undefined && !autoNoted) {
      autoNoted = true;
      console.error(`note: ${why}; using the emulated CPU (--accel emu), guest code runs slower`);
    }
  } else {
    kind = choice;
  }
  const have = opened.get(kind);
  if (have) return have;
  const accel = kind === "kvm" ? openKvmAccelerator() : openEmuAccelerator();
  opened.set(kind, accel);
  return accel;
}

/** The accelerator `choice` would pick, or the one-line reason none can be used. */
export function probeAccelerator(choice: AccelChoice = accelChoice()): Accelerator | string {
  try {
    return openAccelerator(choice);
  } catch (e) {
    if (e instanceof AccelUnavailableError) return e.message;
    throw e;
  }
}
