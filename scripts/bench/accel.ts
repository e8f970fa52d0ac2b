/**
 * The accelerator a benchmark's guests run on (`DCRES_ACCEL`, else auto: KVM when /dev/kvm opens,
 * else the emulated CPU) and the sizes scaled to it: KVM's full sizes, or smaller ones on the
 * emulated CPU so a bench finishes in minutes there. `DCRES_BENCH_SIZE=full` runs the full sizes on
 * any accelerator, `DCRES_BENCH_SIZE=emu` the small ones on any.
 */
import type { AccelChoice, Accelerator, AccelKind } from "../../src/accel/accel.ts";
import {
  ACCEL_ENV,
  accelChoice,
  kvmUnavailableReason,
  openAccelerator,
  probeAccelerator,
} from "../../src/accel/select.ts";

/** The environment variable that overrides the per-accelerator sizes. */
export const SIZE_ENV = "DCRES_BENCH_SIZE";

/** Which size set a run uses. */
export type BenchSize = "full" | "emu";

/** What a benchmark's JSON records about the accelerator and sizes. */
export interface BenchAccelInfo {
  /** The accelerator guests ran on. */
  kind: AccelKind;
  /** Its description (CPU, library version). */
  description: string;
  /** Why auto did not pick KVM, when it did not. */
  why?: string;
  /** The size set used. */
  size: BenchSize;
}

/** The accelerator a benchmark runs on and the sizes that go with it. */
export class BenchAccel {
  private constructor(readonly accel: Accelerator, readonly info: BenchAccelInfo) {}

  /** Opens this run's accelerator (as `dcres run` would) and reads `DCRES_BENCH_SIZE`. */
  static open(choice: AccelChoice = accelChoice()): BenchAccel {
    return BenchAccel.of(openAccelerator(choice));
  }

  /** `choice` for a second set of figures (`why` says why), or why it cannot be used here. */
  static probe(choice: AccelChoice, why: string): BenchAccel | string {
    const a = probeAccelerator(choice);
    return typeof a === "string" ? a : BenchAccel.of(a, why);
  }

  private static of(accel: Accelerator, asked?: string): BenchAccel {
    const env = Deno.env.get(SIZE_ENV);
    if (env !== undefined && env !== "full" && env !== "emu") {
      throw new Error(`${SIZE_ENV} must be full or emu, got "${env}"`);
    }
    const size: BenchSize = (env as BenchSize | undefined) ??
      (accel.kind === "kvm" ? "full" : "emu");
    const why = accel.kind === "emu"
      ? asked ?? kvmUnavailableReason() ?? `${ACCEL_ENV}=emu`
      : undefined;
    return new BenchAccel(accel, {
      kind: accel.kind,
      description: accel.capabilities.description,
      why,
      size,
    });
  }

  /** The accelerator's name. */
  get kind(): AccelKind {
    return this.info.kind;
  }

  /** True when this run uses the full (KVM) sizes. */
  get full(): boolean {
    return this.info.size === "full";
  }

  /** The full-size value, or the emulated CPU's smaller one (see `SIZE_ENV`). */
  pick<T>(values: { full: T; emu: T }): T {
    return this.full ? values.full : values.emu;
  }

  /** A label for a figure that depends on the guest CPU: `label [emu]`. */
  cpu(label: string): string {
    return `${label} [${this.kind}]`;
  }

  /** The header's accelerator part: kind, description, why, and (unless not) the size set. */
  describe(sizes = true): string {
    const why = this.info.why ? `; ${this.info.why}` : "";
    const set = this.full
      ? `full sizes${this.kind === "kvm" ? "" : ` (${SIZE_ENV}=full)`}`
      : `sizes scaled for the emulated CPU (${SIZE_ENV}=full for KVM's)`;
    return `--accel ${this.kind}: ${this.info.description}${why}${sizes ? `; ${set}` : ""}`;
  }
}
