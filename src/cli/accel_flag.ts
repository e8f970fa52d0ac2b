/**
 * The `--accel auto|kvm|emu` flag of the commands that start VMs: parsed (a bad value is a usage
 * error), opened for a VM this process runs or spawns, sent to an agent only when given (the
 * agent's own default applies otherwise), and the note a slow guest kernel deserves.
 */
import { type AccelChoice, type Accelerator, AccelUnavailableError } from "../accel/accel.ts";
import { accelChoice, openAccelerator } from "../accel/select.ts";
import { UsageError } from "./units.ts";

/** Help text of `--accel`. */
export const ACCEL_HELP =
  "accelerator: auto, kvm or emu (default $DCRES_ACCEL, else auto: kvm when /dev/kvm opens)";

/** `--accel` if given, else `$DCRES_ACCEL`, else `auto`; a bad value is a usage error. */
export function accelFlag(flag?: string): AccelChoice {
  try {
    return accelChoice(flag);
  } catch (e) {
    if (e instanceof AccelUnavailableError) throw new UsageError(e.message);
    throw e;
  }
}

/** The accelerator a VM started from this process runs on (here, or in a `dcres vmm` it spawns). */
export function openAcceleratorFlag(flag?: string): Accelerator {
  return openAccelerator(accelFlag(flag));
}

/** The `accel` argument of an agent RPC: present only when `--accel` was given. */
export function remoteAccel(flag?: string): { accel?: AccelChoice } {
  return flag === undefined ? {} : { accel: accelFlag(flag) };
}

/** The `dcres vmm` arguments that make it run on `accel`. */
export function vmmAccelArgs(accel: Accelerator | AccelChoice): string[] {
  return ["--accel", typeof accel === "string" ? accel : accel.kind];
}

/**
 * Says on stderr when guest kernel-mode code runs slowly under KVM here (PVM). The emulated CPU
 * runs all guest code emulated and `auto` already said it chose it, so it gets no second note.
 */
export function noteSlowGuestKernel(accel: Accelerator, say = (s: string) => console.error(s)) {
  if (accel.capabilities.fastGuestKernel || accel.kind !== "kvm") return;
  say(
    `note: guests here run on ${accel.capabilities.description}: guest kernel-mode code is slow (memstamp keeps its workload in ring 3)`,
  );
}
