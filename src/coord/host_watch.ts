/**
 * One agent as the coordinator watches it: its heartbeats (`agent.lease`, see
 * `agent/lease_handler.ts` for why the grant counts from the answer), the lease granted to it, and
 * what it last reported. Only the leader runs these.
 */
import * as v from "valibot";
import { GrantedLease, type LeaseTerms } from "../agent/lease.ts";
import type { LeasedVm, LeaseReply } from "../agent/lease_handler.ts";
import type { RpcClient } from "../net/quic.ts";
import { withTimeout } from "../rpc/deadline.ts";
import type { HostState } from "./host_state.ts";

/** Most VMs one agent's heartbeat may report. */
const MAX_VMS = 4096;

const replySchema = v.object({
  renewal: v.pipe(v.string(), v.minLength(1), v.maxLength(64)),
  heldMs: v.pipe(v.number(), v.minValue(0)),
  vms: v.pipe(
    v.array(v.object({
      name: v.pipe(v.string(), v.maxLength(256)),
      state: v.picklist(["running", "paused", "stopped"]),
      pausedReason: v.optional(v.pipe(v.string(), v.maxLength(4096))),
      split: v.optional(v.pipe(v.array(v.pipe(v.string(), v.maxLength(256))), v.maxLength(64))),
    })),
    v.maxLength(MAX_VMS),
  ),
  unanswered: v.optional(
    v.pipe(v.array(v.pipe(v.string(), v.maxLength(256))), v.maxLength(MAX_VMS)),
  ),
});

/** Dials an agent as the coordinator. */
export type Dial = (addr: string) => Promise<RpcClient>;

/** The coordinator's view of one agent. */
export class HostWatch {
  /** Its name in the config. */
  readonly name: string;
  /** Its agent's address. */
  readonly addr: string;
  /** The lease as granted: when it has surely lapsed on the host. */
  readonly granted: GrantedLease;
  /** When it last answered (the coordinator's monotonic clock), or when watching began. */
  lastOkAt: number;
  /** Set by each answer; the evaluator clears it once it has seen it. */
  answered = false;
  /** Its state, once known. */
  state?: HostState;
  /** Fencing epoch of its lease. */
  epoch: number;
  /** Its VMs, as last reported. */
  vms: LeasedVm[] = [];
  /** VMs it has whose VMMs did not answer its last heartbeat in time: nothing is known of them. */
  unanswered: string[] = [];
  /** The host name in its certificate, once connected. */
  certHost?: string;
  /** Why its last heartbeat failed. */
  lastError?: string;
  #client?: RpcClient;
  #pending?: string;

  /**
   * Watching `addr` from `now` on. Any lease an earlier coordinator granted was granted before
   * `now`, so it is taken as granted at `now`: the host is not declared down before it lapses.
   */
  constructor(name: string, addr: string, terms: LeaseTerms, epoch: number, now: number) {
    this.name = name;
    this.addr = addr;
    this.epoch = epoch;
    this.granted = new GrantedLease(terms);
    this.granted.grant(now);
    this.lastOkAt = now;
  }

  /** One heartbeat under leadership `term`, given up after `timeoutMs`. */
  async beat(term: number, terms: LeaseTerms, dial: Dial, timeoutMs: number): Promise<void> {
    const grant = this.#pending;
    this.#pending = undefined;
    try {
      const client = this.#client ?? await this.#connect(dial, timeoutMs);
      const raw = await client.call<LeaseReply>("agent.lease", {
        term,
        epoch: this.epoch,
        terms,
        ...(grant ? { grant } : {}),
        // The VMMs get a third of the wait: the answer comes in time, if without the slow ones.
        vmsWithinMs: Math.max(10, Math.floor(timeoutMs / 3)),
      }, { deadlineMs: timeoutMs });
      // The grant counts from the answer's arrival: the agent began this renewal before answering.
      const at = performance.now();
      const reply = v.parse(replySchema, raw);
      this.granted.grant(at);
      this.#pending = reply.renewal;
      this.lastOkAt = at;
      this.answered = true;
      this.vms = reply.vms;
      this.unanswered = reply.unanswered ?? [];
      this.lastError = undefined;
    } catch (e) {
      this.lastError = e instanceof v.ValiError
        ? `its heartbeat answer is malformed: ${e.message}`
        : (e as Error).message;
      this.close();
    }
  }

  /** The host was declared down: later grants are of a new epoch, none of the old is confirmed. */
  declareDown(): void {
    this.epoch++;
    this.#pending = undefined;
  }

  /** Drops the connection (the next heartbeat dials again). */
  close(): void {
    void this.#client?.close().catch(() => {});
    this.#client = undefined;
  }

  async #connect(dial: Dial, timeoutMs: number): Promise<RpcClient> {
    const p = dial(this.addr);
    try {
      this.#client = await withTimeout(p, timeoutMs, `connecting to ${this.addr}`);
    } catch (e) {
      p.then((c) => c.close(), () => {});
      throw e;
    }
    this.certHost = this.#client.host;
    return this.#client;
  }
}
