/**
 * The coordinator daemon (`dcres coord`): it campaigns for leadership in its store and, while it
 * leads, heartbeats every agent of its config, which renews their leases, judges each host up,
 * suspect or down, and records what changes (host states as events, lease epochs and expiries,
 * where each VM runs), takes checkpoints by the VMs' policies (`scheduler.ts`), and restores the
 * VMs of a host declared down (`recovery.ts`). A standby waits in the campaign.
 */
import { getLogger } from "@logtape/logtape";
import { sleep } from "../rpc/deadline.ts";
import type { CoordConfig } from "./config.ts";
import { type HostState, nextHostState } from "./host_state.ts";
import { type Dial, HostWatch } from "./host_watch.ts";
import { dialCalls } from "./agent_calls.ts";
import { Recovery } from "./recovery.ts";
import { placementOps } from "./placement_report.ts";
import { ScheduleCounters, Scheduler } from "./scheduler.ts";
import { type CoordState, type Leadership, MAX_OPS, type StateOp } from "./state.ts";

const log = getLogger(["dcres", "coord"]);

/** How often the leader prunes old events, ms. */
const PRUNE_EVERY_MS = 600_000;

/** The kinds of event a host's state change records. */
const STATE_EVENT: Record<HostState, string> = {
  up: "host-up",
  suspect: "host-suspect",
  down: "host-down",
};

/** A running coordinator. */
export class Coordinator {
  readonly #cfg: CoordConfig;
  readonly #state: CoordState;
  readonly #dial: Dial;
  readonly #recovery: Recovery;
  #hosts: HostWatch[] = [];
  /** Its scheduled checkpoints, counted for `/metrics`. */
  readonly counters: ScheduleCounters = new ScheduleCounters();

  /** A coordinator over `state` that reaches agents with `dial`. */
  constructor(cfg: CoordConfig, state: CoordState, dial: Dial) {
    this.#cfg = cfg;
    this.#state = state;
    this.#dial = dial;
    this.#recovery = new Recovery(state, dialCalls(dial));
  }

  /** Leads whenever elected, until `signal` aborts. */
  async run(signal: AbortSignal): Promise<void> {
    while (!signal.aborted) {
      let lead: Leadership;
      try {
        lead = await this.#state.campaign(this.#cfg.id, this.#cfg.leaderTtlMs, signal);
      } catch (e) {
        if (signal.aborted) return;
        throw e;
      }
      log.info("coordinator {id} leads, term {term}", { id: this.#cfg.id, term: lead.term });
      const both = AbortSignal.any([signal, lead.signal]);
      try {
        await this.#lead(lead.term, both);
      } finally {
        for (const h of this.#hosts) h.close();
      }
      if (!signal.aborted) log.warn("coordinator {id} lost the leadership", { id: this.#cfg.id });
    }
  }

  async #lead(term: number, signal: AbortSignal): Promise<void> {
    const now = performance.now();
    const leases = new Map((await this.#state.list("lease")).map((l) => [l.value.host, l.value]));
    this.#hosts = this.#cfg.agents.map((a) => {
      const h = new HostWatch(a.name, a.addr, this.#cfg.lease, leases.get(a.addr)?.epoch ?? 1, now);
      h.state = leases.get(a.addr)?.state;
      return h;
    });
    const beats = this.#hosts.map((h) => this.#beatLoop(h, term, signal));
    const up = (addr: string) => this.#hosts.some((h) => h.addr === addr && h.state === "up");
    const schedule = new Scheduler(this.#state, this.#dial, up, this.counters)
      .run(this.#cfg.policies, signal);
    let prunedAt = -Infinity;
    while (!signal.aborted) {
      await sleep(this.#cfg.heartbeatMs);
      // A renewal of the leadership that is late pauses the work; a lost one aborts `signal`.
      if (signal.aborted || !this.#state.isLeader()) continue;
      if (performance.now() - prunedAt > PRUNE_EVERY_MS) {
        prunedAt = performance.now();
        await this.#prune();
      }
      try {
        await this.#record();
        await this.#recovery.tick(this.#hosts, signal);
      } catch (e) {
        log.warn("recording host states failed: {error}", { error: (e as Error).message });
      }
    }
    await Promise.all([...beats, schedule]);
    await this.#recovery.settle();
  }

  /** Drops events older than the config keeps: host states live in the leases, not in events. */
  async #prune(): Promise<void> {
    try {
      const n = await this.#state.pruneEvents(Date.now() - this.#cfg.eventsKeepMs);
      if (n) {
        log.info("pruned {n} events older than {days} days", {
          n,
          days: this.#cfg.eventsKeepMs / 86_400_000,
        });
      }
    } catch (e) {
      log.warn("pruning old events failed: {error}", { error: (e as Error).message });
    }
  }

  async #beatLoop(h: HostWatch, term: number, signal: AbortSignal): Promise<void> {
    while (!signal.aborted) {
      const t0 = performance.now();
      // A slow answer is waited for up to the suspect time: by then the host is suspect anyway.
      if (this.#state.isLeader()) {
        await h.beat(term, this.#cfg.lease, this.#dial, this.#cfg.suspectMs);
      }
      await sleep(Math.max(0, this.#cfg.heartbeatMs - (performance.now() - t0)));
    }
  }

  /** Judges every host and commits what changed. */
  async #record(): Promise<void> {
    // Read afresh each round: restores and adoptions change placements between rounds.
    const placements = new Map(
      (await this.#state.list("placement")).map((p) => [p.value.vm, p] as const),
    );
    const now = performance.now();
    const wall = Date.now();
    const batches: Batch[] = [];
    const moves: StateOp[][] = [];
    for (const h of this.#hosts) {
      const ops: StateOp[] = [];
      const answered = h.answered;
      h.answered = false;
      const next = nextHostState(
        {
          state: h.state ?? "up",
          lastOkAt: h.lastOkAt,
          answered,
          leaseLapsed: h.granted.lapsed(now),
        },
        now,
        this.#cfg,
      );
      let apply = () => {};
      let epoch = h.epoch;
      let judged = h.state;
      // A host never heard of stays unknown until it answers or its silence makes it suspect.
      if (!(h.state === undefined && !answered && next === "up") && next !== h.state) {
        if (next === "down") epoch++;
        judged = next;
        const silentS = ((now - h.lastOkAt) / 1000).toFixed(1);
        const detail = next === "up"
          ? `${h.name} answers heartbeats`
          : `${h.name} silent for ${silentS} s${next === "down" ? ", its lease lapsed" : ""}: ${
            h.lastError ?? "no answer"
          }`.slice(0, 1000);
        ops.push({
          op: "event",
          event: { kind: STATE_EVENT[next], timeMs: wall, host: h.addr, detail },
        });
        // Taken on only once committed: a failed commit is judged again at the next tick.
        apply = () => {
          if (next === "down") h.declareDown();
          h.state = next;
          const props = { host: h.name, state: next, detail };
          if (next === "up") log.info("host {host} is {state}: {detail}", props);
          else log.warn("host {host} is {state}: {detail}", props);
        };
      }
      if (answered || ops.length) {
        // Past once lapsed: the record keeps when that was.
        const expiresMs = Math.round(wall + (h.granted.lapsedAt - now));
        ops.push({
          op: "put",
          kind: "lease",
          value: { host: h.addr, expiresMs, epoch, ...(judged ? { state: judged } : {}) },
        });
      }
      if (ops.length) batches.push({ ops, apply });
      if (answered) {
        moves.push(...placementOps(h, this.#hosts, placements, (vm) => this.#recovery.busy(vm)));
      }
    }
    for (const group of chunks(batches)) {
      await this.#state.commit(group.flatMap((b) => b.ops), { asLeader: true });
      for (const b of group) b.apply();
    }
    for (const group of chunks(moves.map((ops) => ({ ops, apply: () => {} })))) {
      await this.#state.commit(group.flatMap((b) => b.ops), { asLeader: true });
    }
  }
}

/** Steps to commit together, and what to take on once they are committed. */
interface Batch {
  ops: StateOp[];
  apply: () => void;
}

/** `batches` grouped into commits of at most MAX_OPS steps, each batch whole in one commit. */
function chunks(batches: Batch[]): Batch[][] {
  const out: Batch[][] = [];
  let size = 0;
  for (const b of batches) {
    const last = out.at(-1);
    if (last && size + b.ops.length <= MAX_OPS) {
      last.push(b);
      size += b.ops.length;
    } else {
      out.push([b]);
      size = b.ops.length;
    }
  }
  return out;
}
