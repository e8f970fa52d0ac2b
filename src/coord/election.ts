/**
 * What both stores' elections share: the loop a standby campaigns in, and the keeper that renews a
 * leader's lease in the background and tells when it is lost. A leader counts itself leader only
 * until `ttl` after it last *sent* a renewal the store accepted, which the store's own lapse is
 * never earlier than, so two stores never both believe they lead (clock rates aside).
 */
import { getLogger } from "@logtape/logtape";
import { rejectOnAbort, within } from "../rpc/deadline.ts";
import { type LeaderInfo, type Leadership, StateStoreError } from "./state.ts";

const log = getLogger(["dcres", "coord"]);

/** Shortest and longest leader lease. */
export const MIN_TTL_MS = 1000;
/** Longest leader lease. */
export const MAX_TTL_MS = 300_000;

/** A candidate's id: printable, bounded. */
export function checkCandidate(id: string, ttlMs: number): void {
  if (!/^[A-Za-z0-9][A-Za-z0-9_.:@-]{0,127}$/.test(id)) {
    throw new RangeError(
      `candidate id ${JSON.stringify(id.slice(0, 80))} is not 1-128 of [A-Za-z0-9_.:@-]`,
    );
  }
  if (!Number.isSafeInteger(ttlMs) || ttlMs < MIN_TTL_MS || ttlMs > MAX_TTL_MS) {
    throw new RangeError(`leader lease ${ttlMs} ms is outside ${MIN_TTL_MS} to ${MAX_TTL_MS} ms`);
  }
}

/** How often a standby tries again and a leader renews: a third of the lease, at most 1 s. */
export function pollMs(ttlMs: number): number {
  return Math.min(1000, Math.floor(ttlMs / 3));
}

/** What a store does for its election. */
export interface ElectionOps {
  /** One attempt: the term if this candidate now leads. */
  tryLead(id: string, ttlMs: number): Promise<number | undefined>;
  /** Extends the lease; false if it is gone (lapsed or taken). */
  renew(lead: LeaderInfo, ttlMs: number): Promise<boolean>;
  /** Ends the lease so a standby may take over now. */
  release(lead: LeaderInfo): Promise<void>;
}

/** One store's side of the election: campaigns, keeps the lease, resigns. */
export class Election {
  #ops: ElectionOps;
  #where: string;
  #lead:
    | { info: LeaderInfo; ttlMs: number; validUntil: number; abort: AbortController }
    | undefined;
  #timer: ReturnType<typeof setTimeout> | undefined;
  #closed = false;
  #campaigning = false;

  constructor(ops: ElectionOps, where: string) {
    this.#ops = ops;
    this.#where = where;
  }

  /**
   * Tries every {@link pollMs} until this candidate leads or `signal` aborts; a store that cannot be
   * reached ({@link StateStoreError}) is tried again, anything else rejects.
   */
  async campaign(id: string, ttlMs: number, signal?: AbortSignal): Promise<Leadership> {
    checkCandidate(id, ttlMs);
    if (this.#lead || this.#campaigning) {
      throw new StateStoreError(
        this.#where,
        "this store already campaigns or leads; one campaign at a time",
      );
    }
    this.#campaigning = true;
    try {
      return await this.#campaign(id, ttlMs, signal);
    } finally {
      this.#campaigning = false;
    }
  }

  async #campaign(id: string, ttlMs: number, signal?: AbortSignal): Promise<Leadership> {
    for (;;) {
      signal?.throwIfAborted();
      if (this.#closed) throw new StateStoreError(this.#where, "the state was closed");
      const sent = performance.now();
      let term: number | undefined;
      try {
        term = await this.#ops.tryLead(id, ttlMs);
      } catch (e) {
        // A standby outlives a store that is down for a while; anything else is not transient.
        if (!(e instanceof StateStoreError)) throw e;
        log.warn("{where}: campaigning failed, trying again: {e}", { where: this.#where, e });
      }
      if (term !== undefined) {
        const abort = new AbortController();
        this.#lead = { info: { id, term }, ttlMs, validUntil: sent + ttlMs, abort };
        this.#timer = setTimeout(() => this.#renew(), pollMs(ttlMs));
        log.info("{where}: {id} leads, term {term}", { where: this.#where, id, term });
        return { id, term, signal: abort.signal };
      }
      await within(rejectOnAbort(signal), pollMs(ttlMs));
    }
  }

  /** True while the lease cannot yet have lapsed in the store. */
  isLeader(): boolean {
    const l = this.#lead;
    return l !== undefined && !l.abort.signal.aborted && performance.now() < l.validUntil;
  }

  /** The leadership held, valid or not, for a store's commit guard. */
  held(): LeaderInfo | undefined {
    return this.#lead?.info;
  }

  /** Stops renewing and ends the lease in the store. */
  async resign(): Promise<void> {
    const l = this.#lead;
    if (!l) return;
    this.#stop("resigned");
    await this.#ops.release(l.info);
  }

  /** Resigns and ends every campaign: for the store's close. */
  async close(): Promise<void> {
    this.#closed = true;
    await this.resign();
  }

  async #renew(): Promise<void> {
    const l = this.#lead;
    if (!l || l.abort.signal.aborted) return;
    const sent = performance.now();
    try {
      if (await this.#ops.renew(l.info, l.ttlMs)) {
        l.validUntil = sent + l.ttlMs;
      } else {
        return this.#stop("its lease is gone from the store");
      }
    } catch (e) {
      log.warn("{where}: renewing the leader lease failed: {e}", { where: this.#where, e });
    }
    if (this.#lead !== l) return;
    if (performance.now() >= l.validUntil) return this.#stop("its lease lapsed before a renewal");
    this.#timer = setTimeout(() => this.#renew(), pollMs(l.ttlMs));
  }

  #stop(why: string): void {
    const l = this.#lead;
    clearTimeout(this.#timer);
    this.#timer = undefined;
    this.#lead = undefined;
    if (!l) return;
    log.info("{where}: {id} no longer leads: {why}", { where: this.#where, id: l.info.id, why });
    l.abort.abort(new Error(`${this.#where}: leadership of ${l.info.id} ended: ${why}`));
  }
}
