/**
 * `agent.lease`, the coordinator's heartbeat (docs/COORDINATOR.md, "Heartbeats"). The coordinator
 * calls; the agent counts its lease from a moment it knows came before the coordinator's grant:
 *
 * 1. call k reaches the agent, which notes the time `r_k` on its boot time clock under a fresh
 *    token and answers with that token (and its VMs);
 * 2. the coordinator grants the renewal when the answer reaches it, at `A_k`: since the agent noted
 *    `r_k` before it answered, `r_k ≤ A_k` in true time, whatever the delays;
 * 3. call k+1 carries the token back, and only then does the agent extend its lease from `r_k`.
 *
 * So this is the lease model of `lease.ts` with the agent's answer as its renewal request: a call
 * that arrives late only names an older `r`, and an answer that never arrives is never granted, so
 * the token is never echoed. Tokens the agent did not issue are refused, so no caller can make it
 * count from a moment of its choosing. The lease goes to the VMMs in `lease.json`; once written it
 * stays, so the VMs fence when the renewals stop, also when this agent dies.
 */
import { getLogger } from "@logtape/logtape";
import { bootTimeMs } from "../ffi/libc.ts";
import type { RpcHandler } from "../rpc/dispatcher.ts";
import { RpcError } from "../rpc/errors.ts";
import { surveyVms } from "../vmm/control/client.ts";
import { writeLease } from "../vmm_process/fence.ts";
import { checkLeaseTerms, HeldLease, type LeaseTerms, LeaseTermsError } from "./lease.ts";

const log = getLogger(["dcres", "agent", "lease"]);

/** Renewals an agent remembers awaiting their grant: a few heartbeats' worth. */
const MAX_PENDING = 16;

/** A VM as an agent reports it to the coordinator. */
export interface LeasedVm {
  /** Its name. */
  name: string;
  /** Its run state. */
  state: "running" | "paused" | "stopped";
  /** Why it is paused, when nobody asked (fenced, a sub-host unreachable). */
  pausedReason?: string;
  /** For a split VM: the hosts holding its pages, "main" for this one, the others by address. */
  split?: string[];
}

/** What `agent.lease` answers. */
export interface LeaseReply {
  /** The renewal this heartbeat starts; the next call echoes it to grant it. */
  renewal: string;
  /** Ms of lease the agent holds from now on (0 when none), by its own clock. */
  heldMs: number;
  /** Its VMs that answered in time. */
  vms: LeasedVm[];
  /** VMs whose VMM did not answer in time (absent when none): nothing is known of them now. */
  unanswered?: string[];
}

/** How long a heartbeat waits for the VMMs' answers unless the coordinator says (`vmsWithinMs`). */
const VMS_WITHIN_MS = 1000;

/** The agent's side of the heartbeats: its lease and the renewals it has begun. */
export class AgentLease {
  readonly #stateDir: string;
  #held?: HeldLease;
  #termsKey = "";
  #term = 0;
  #written = -Infinity;
  #writtenEpoch = -1;
  readonly #pending = new Map<string, number>();

  /** The lease of the VMs whose control sockets are in `stateDir`. */
  constructor(stateDir: string) {
    this.#stateDir = stateDir;
  }

  /** The `agent.lease` handler. */
  handlers(): Record<string, RpcHandler> {
    return { "agent.lease": (args) => this.#heartbeat(args) };
  }

  async #heartbeat(args: Record<string, unknown>): Promise<LeaseReply> {
    // Noted first: the moment this renewal counts from must precede the answer.
    const receivedAt = bootTimeMs();
    const term = args.term as number;
    if (term < this.#term) {
      throw new RpcError(
        "permission-denied",
        `agent.lease: term ${term} is older than term ${this.#term} already seen; a newer coordinator leads`,
      );
    }
    this.#term = term;
    this.#take(args.terms as LeaseTerms, args.epoch as number, args.grant as string | undefined);
    const renewal = crypto.randomUUID();
    this.#pending.set(renewal, receivedAt);
    while (this.#pending.size > MAX_PENDING) {
      this.#pending.delete(this.#pending.keys().next().value!);
    }
    // Bounded: a VMM that hangs must not hold up the answer and cost every VM here the lease.
    const survey = await surveyVms(this.#stateDir, (args.vmsWithinMs as number) ?? VMS_WITHIN_MS);
    const vms = survey.vms.map((v): LeasedVm => ({
      name: v.name,
      state: v.state,
      ...(v.pausedReason ? { pausedReason: v.pausedReason } : {}),
      ...(v.paging ? { split: Object.keys(v.paging.residentPages).sort() } : {}),
    }));
    return {
      renewal,
      heldMs: Math.max(0, Math.round(this.#written - bootTimeMs())),
      vms,
      ...(survey.unanswered.length ? { unanswered: survey.unanswered } : {}),
    };
  }

  /** Extends the lease by the renewal `grant` names, if this agent began it, and hands it on. */
  #take(terms: LeaseTerms, epoch: number, grant: string | undefined) {
    try {
      checkLeaseTerms(terms);
    } catch (e) {
      if (e instanceof LeaseTermsError) {
        throw new RpcError("bad-request", `agent.lease: ${e.message}`);
      }
      throw e;
    }
    const key = `${terms.ttlMs}/${terms.drift}/${terms.fenceMs}`;
    if (key !== this.#termsKey || !this.#held) {
      // New terms count from the next grant; what was written under the old ones still stands.
      this.#held = new HeldLease(terms);
      this.#termsKey = key;
    }
    if (grant === undefined) return;
    const at = this.#pending.get(grant);
    if (at === undefined) return;
    for (const k of [...this.#pending.keys()]) {
      this.#pending.delete(k);
      if (k === grant) break;
    }
    this.#held.granted(at, epoch);
    const until = Math.max(this.#written, this.#held.until);
    if (until === this.#written && this.#held.epoch === this.#writtenEpoch) return;
    writeLease(this.#stateDir, { untilMs: until, epoch: this.#held.epoch });
    if (this.#writtenEpoch !== this.#held.epoch) {
      log.info("leased by the coordinator, epoch {epoch}", { epoch: this.#held.epoch });
    }
    this.#written = until;
    this.#writtenEpoch = this.#held.epoch;
  }
}
