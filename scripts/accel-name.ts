/** Prints the accelerator this host's guests run on, and why, for the test runner's summary. */
import { accelChoice, kvmUnavailableReason, probeAccelerator } from "../src/accel/select.ts";

const a = probeAccelerator(accelChoice());
if (typeof a === "string") {
  console.log(`none (${a})`);
} else {
  const why = a.kind === "emu" ? ` because ${kvmUnavailableReason() ?? "DCRES_ACCEL=emu"}` : "";
  console.log(`${a.kind}, ${a.capabilities.description}${why}`);
}
