/**
 * Self-fencing in the VMM: a VM whose host may have been declared down must stop running by itself,
 * even when its agent is dead or hung (VMs outlive their agent). The agent keeps its lease from the
 * coordinator in `lease.json` in the VMs' state directory, as a deadline on the host's boot time
 * clock, which every process of the host reads alike; each VMM checks it and pauses its VM once
 * the deadline passes without a renewal. No file means no coordinator, and no fencing. A file that
 * cannot be read as a lease counts as lapsed: fencing must fail safe.
 */
import { getLogger } from "@logtape/logtape";
import { join } from "node:path";
import * as v from "valibot";
import { writeFileAtomic } from "../ffi/atomic_file.ts";
import { bootTimeMs } from "../ffi/libc.ts";
import type { Vm } from "../vmm/vm.ts";

const log = getLogger(["dcres", "fence"]);

/** The lease file's name in a state directory. */
export const LEASE_FILE = "lease.json";
/** Largest lease file read; a lease is a few dozen bytes. */
const MAX_LEASE_BYTES = 4096;
/** How often a VMM looks at the lease, ms: part of the fencing time the lease terms allow. */
export const FENCE_CHECK_MS = 200;

const leaseSchema = v.strictObject({
  v: v.literal(1),
  untilMs: v.pipe(v.number(), v.finite()),
  epoch: v.pipe(v.number(), v.safeInteger(), v.minValue(0)),
});

/** The lease as the agent hands it to its VMMs. */
export type LeaseRecord = v.InferOutput<typeof leaseSchema>;

/** Writes the agent's lease for the VMMs of `stateDir` (atomically: a reader never sees half). */
export function writeLease(stateDir: string, lease: Omit<LeaseRecord, "v">): void {
  const bytes = new TextEncoder().encode(JSON.stringify({ v: 1, ...lease }));
  writeFileAtomic(join(stateDir, LEASE_FILE), bytes, { mode: 0o600 });
}

/** Why the VMs of `stateDir` must not run at boot time `now` (ms), or undefined while they may. */
export function fenceReason(stateDir: string, now: number): string | undefined {
  const file = join(stateDir, LEASE_FILE);
  let text: string;
  try {
    using f = Deno.openSync(file, { read: true });
    const buf = new Uint8Array(MAX_LEASE_BYTES + 1);
    const n = f.readSync(buf) ?? 0;
    if (n > MAX_LEASE_BYTES) return `fenced: ${file} is over ${MAX_LEASE_BYTES} bytes`;
    text = new TextDecoder().decode(buf.subarray(0, n));
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return undefined;
    return `fenced: cannot read ${file}: ${(e as Error).message}`;
  }
  let lease: LeaseRecord;
  try {
    lease = v.parse(leaseSchema, JSON.parse(text));
  } catch {
    return `fenced: ${file} is not a lease`;
  }
  if (now < lease.untilMs) return undefined;
  return `fenced: the host's lease (epoch ${lease.epoch}) lapsed ${
    ((now - lease.untilMs) / 1000).toFixed(1)
  } s ago; the coordinator may run this VM elsewhere, so it stays paused until released`;
}

/**
 * Watches the lease of `stateDir` for `vm`: once it lapses, the VM is paused (a pause of its own,
 * which an operator's resume does not end) and stays so, since the coordinator may have restored
 * it elsewhere by then.
 */
export class Fence implements Disposable {
  readonly #vm: Vm;
  readonly #stateDir: string;
  #timer?: ReturnType<typeof setInterval>;
  #reason?: string;
  #fencedAt?: number;

  /** Starts watching for `vm`. */
  constructor(vm: Vm, stateDir: string) {
    this.#vm = vm;
    this.#stateDir = stateDir;
    this.#check();
    if (!this.#reason) this.#timer = setInterval(() => this.#check(), FENCE_CHECK_MS);
  }

  /** Why the VM is fenced, once it is. */
  get reason(): string | undefined {
    return this.#reason;
  }

  /** When its vCPUs had all stopped for the fence (ms since the epoch), once they have. */
  get fencedAtMs(): number | undefined {
    return this.#fencedAt;
  }

  #check() {
    if (this.#vm.isStopped) return this[Symbol.dispose]();
    const why = fenceReason(this.#stateDir, bootTimeMs());
    if (!why) return;
    this.#reason = why;
    this[Symbol.dispose]();
    log.warn("{reason}", { reason: why });
    this.#vm.pause().then(
      () => this.#fencedAt = Date.now(),
      (e) => log.warn("a vCPU has not parked yet: {error}", { error: (e as Error).message }),
    );
  }

  /** Stops watching. */
  [Symbol.dispose](): void {
    clearInterval(this.#timer);
    this.#timer = undefined;
  }
}
