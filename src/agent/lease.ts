/**
 * Host leases: the arithmetic that keeps a VM from running twice. An agent holds a lease from the
 * coordinator, renewed by each heartbeat, and pauses its VMs (fences itself) once the lease has
 * lapsed by its own clock. The coordinator may restore that agent's VMs elsewhere only once the
 * lease has surely lapsed there too.
 *
 * Each side measures on its own monotonic clock, and each clock may run fast or slow by up to
 * `drift` (a fraction) against true time, so no wall-clock agreement is needed:
 * - the agent counts from the moment it SENT the renewal, which comes before the coordinator
 *   granted it, and counts `ttl × (1 − drift)` of its time: at most `ttl` of true time;
 * - the coordinator counts from the moment it GRANTED the renewal `(ttl + fenceMs) × (1 + drift)`
 *   of its time: at least `ttl` of true time, plus `fenceMs` for the agent to notice its lapse and
 *   pause its vCPUs.
 * So the agent's lapse plus its fencing always comes before the coordinator's. A reply that arrives
 * late only shortens the agent's lease; one that never arrives leaves the coordinator waiting for a
 * lease it granted but the agent never saw, which is safe.
 */

/** The rules both sides of a lease agree on (the coordinator's config sends them to agents). */
export interface LeaseTerms {
  /** How long a renewal keeps the lease, ms. */
  ttlMs: number;
  /** Most either side's clock may run fast or slow against true time, a fraction (0.01: 1%). */
  drift: number;
  /** Longest an agent takes to notice its lapse and pause its VMs, ms of true time. */
  fenceMs: number;
}

/** Terms a coordinator's config may leave out. */
export const DEFAULT_LEASE_TERMS: LeaseTerms = { ttlMs: 10_000, drift: 0.01, fenceMs: 2_000 };

/** Terms that cannot keep the promise (a drift of 100% leaves an agent no lease at all). */
export class LeaseTermsError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "LeaseTermsError";
  }
}

/** `t`, checked: a positive ttl, a drift in [0, 0.5), a fencing time of at least 0. */
export function checkLeaseTerms(t: LeaseTerms): LeaseTerms {
  if (!(Number.isFinite(t.ttlMs) && t.ttlMs > 0)) {
    throw new LeaseTermsError(`lease ttl ${t.ttlMs} ms: give a positive time, e.g. 10s`);
  }
  if (!(t.drift >= 0 && t.drift < 0.5)) {
    throw new LeaseTermsError(`lease drift ${t.drift}: give a fraction from 0 to below 0.5`);
  }
  if (!(Number.isFinite(t.fenceMs) && t.fenceMs >= 0)) {
    throw new LeaseTermsError(`lease fencing time ${t.fenceMs} ms: give 0 or more`);
  }
  return t;
}

/** The agent's side: when its lease ends by its own clock. */
export class HeldLease {
  readonly #terms: LeaseTerms;
  #until = -Infinity;
  #epoch = 0;

  /** A lease under `terms`, not held until the first renewal is granted. */
  constructor(terms: LeaseTerms) {
    this.#terms = checkLeaseTerms(terms);
  }

  /**
   * The coordinator granted the renewal this agent sent at `sentAt` (its clock, ms), in `epoch`.
   * A grant of an older epoch than one held is ignored: it was overtaken.
   */
  granted(sentAt: number, epoch: number): void {
    if (epoch < this.#epoch) return;
    this.#epoch = epoch;
    this.#until = Math.max(this.#until, sentAt + this.#terms.ttlMs * (1 - this.#terms.drift));
  }

  /** True while the lease holds at `now` (this agent's clock, ms). */
  holds(now: number): boolean {
    return now < this.#until;
  }

  /** When the lease ends on this agent's clock, ms (-Infinity before the first grant). */
  get until(): number {
    return this.#until;
  }

  /** The epoch of the last grant taken. */
  get epoch(): number {
    return this.#epoch;
  }
}

/** The coordinator's side: when a host's lease has surely lapsed there. */
export class GrantedLease {
  readonly #terms: LeaseTerms;
  #lapsedAt = -Infinity;

  /** A lease under `terms`, never granted yet. */
  constructor(terms: LeaseTerms) {
    this.#terms = checkLeaseTerms(terms);
  }

  /** A renewal was granted at `at` (the coordinator's clock, ms). */
  grant(at: number): void {
    const t = this.#terms;
    this.#lapsedAt = Math.max(this.#lapsedAt, at + (t.ttlMs + t.fenceMs) * (1 + t.drift));
  }

  /** True once the host has surely paused its VMs at `now` (the coordinator's clock, ms). */
  lapsed(now: number): boolean {
    return now >= this.#lapsedAt;
  }

  /** From when the host has surely fenced itself, on the coordinator's clock, ms. */
  get lapsedAt(): number {
    return this.#lapsedAt;
  }
}
