/**
 * Which accelerator this test run's guests use (`DCRES_ACCEL`, else auto: KVM when /dev/kvm opens,
 * else the emulated CPU), guest sizes scaled to it, and the reasons tests about KVM itself skip.
 */
import type { AccelKind } from "../../src/accel/accel.ts";
import { accelChoice, kvmUnavailableReason, probeAccelerator } from "../../src/accel/select.ts";

const probed = probeAccelerator(accelChoice());

/** The accelerator guests run on in this test run, or undefined when none can be used. */
export const TEST_ACCEL: AccelKind | undefined = typeof probed === "string"
  ? undefined
  : probed.kind;

/** Why tests that run a guest cannot, or undefined when they can. */
export const noGuestReason: string | undefined = typeof probed === "string" ? probed : undefined;

/** Why tests of KVM itself (ioctls, the Linux guest) skip here, or undefined on a KVM host. */
export const noKvmReason: string | undefined = kvmUnavailableReason() ??
  (TEST_ACCEL === "emu" ? "DCRES_ACCEL=emu forces the emulated CPU" : undefined);

/** Picks the value for this run's accelerator: KVM's full size, or the emulated CPU's smaller one. */
export function perAccel<T>(values: { kvm: T; emu: T }): T {
  return TEST_ACCEL === "emu" ? values.emu : values.kvm;
}

/** `Deno.test` options that skip with a printed reason when `reason` is set. */
export function skipIf(reason: string | undefined, what: string): { ignore: boolean } {
  if (reason) console.log(`skipped: ${what}: ${reason}`);
  return { ignore: reason !== undefined };
}
