/**
 * Checkpoints on schedule, in the leading coordinator: every VM with a policy is checkpointed
 * through its main host's agent (which orchestrates a split VM's sub-hosts) when its policy says,
 * and each committed checkpoint enters the catalog. Due times come from the catalog
 * (policy_time.ts), so a restarted or new leader neither retakes a checkpoint early nor skips one.
 * A VM busy with another operation is skipped for a period; a failed checkpoint is retried with
 * backoff and reported.
 */
import { getLogger } from "@logtape/logtape";
import * as v from "valibot";
import { isName } from "../codec/names.ts";
import { sleep } from "../rpc/deadline.ts";
import { RpcError } from "../rpc/errors.ts";
import type { Dial } from "./host_watch.ts";
import { dueAt, isFull, retryDelay } from "./policy_time.ts";
import type { CatalogEntry, CoordState, Placement, Policy, StateOp } from "./state.ts";

const log = getLogger(["dcres", "coord", "schedule"]);

/** Ms between looks at the schedule. */
export const TICK_MS = 250;
/** Most scheduled checkpoints under way at once through one host. */
export const PER_HOST = 2;
/** The longest one checkpoint may take before it counts as failed. */
export const CHECKPOINT_DEADLINE_MS = 600_000;

/** What an agent answers to `checkpoint`, as far as the catalog needs it: checked, it is input. */
const REPLY = v.object({
  id: v.pipe(v.string(), v.check((s) => isName("checkpoint-id", s), "not a checkpoint id")),
  generation: v.pipe(v.number(), v.safeInteger(), v.minValue(1), v.maxValue(999_999)),
  parent: v.nullable(v.number()),
  retention: v.optional(v.object({
    kept: v.pipe(v.array(v.pipe(v.number(), v.safeInteger())), v.maxLength(100_000)),
  })),
});

type Reply = v.InferOutput<typeof REPLY>;

/** An agent's refusal of an incremental checkpoint that has no parent to build on (ckpt/transaction.ts). */
const FULL_NEEDED = /take a full (one|checkpoint) first/;

/** Counts of scheduled checkpoints by VM, since this coordinator started: for `/metrics`. */
export class ScheduleCounters {
  /** Checkpoints taken and catalogued. */
  readonly taken: Map<string, number> = new Map();
  /** Checkpoints that failed. */
  readonly failed: Map<string, number> = new Map();
  /** Checkpoints skipped because the VM was busy. */
  readonly skipped: Map<string, number> = new Map();

  /** Adds one to `vm`'s count in `m`. */
  static add(m: Map<string, number>, vm: string): void {
    m.set(vm, (m.get(vm) ?? 0) + 1);
  }
}

/** The scheduler's memory of one VM between looks. */
interface VmRun {
  /** A checkpoint of it is under way. */
  busy: boolean;
  /** Not before this (wall clock): after a skip or a failure. */
  holdUntil: number;
  /** Failures in a row. */
  failures: number;
}

/** The checkpoint schedule of one leadership. */
export class Scheduler {
  readonly #state: CoordState;
  readonly #dial: Dial;
  readonly #hostUp: (addr: string) => boolean;
  readonly #counters: ScheduleCounters;
  readonly #runs = new Map<string, VmRun>();
  /** Each VM's catalog entries, oldest generation first, as committed. */
  readonly #catalog = new Map<string, CatalogEntry[]>();
  #since = 0;
  #inFlight = new Set<Promise<void>>();
  /** Scheduled checkpoints under way by main host. */
  readonly #perHost = new Map<string, number>();

  /** A schedule over `state`, reaching agents with `dial`, checkpointing VMs whose host is up. */
  constructor(
    state: CoordState,
    dial: Dial,
    hostUp: (addr: string) => boolean,
    counters: ScheduleCounters,
  ) {
    this.#state = state;
    this.#dial = dial;
    this.#hostUp = hostUp;
    this.#counters = counters;
  }

  /** Seeds `seed` policies absent from the store, then runs the schedule until `signal` aborts. */
  async run(seed: Policy[], signal: AbortSignal): Promise<void> {
    this.#since = Date.now();
    let loaded = false;
    while (!signal.aborted) {
      if (this.#state.isLeader()) {
        try {
          if (!loaded) {
            await this.#seed(seed);
            for (const c of await this.#state.list("checkpoint")) this.#remember(c.value);
            loaded = true;
          }
          await this.#look(signal);
        } catch (e) {
          log.warn("reading the schedule failed: {error}", { error: (e as Error).message });
        }
      }
      await sleep(TICK_MS);
    }
    await Promise.all(this.#inFlight);
  }

  /** The config's policies for VMs the store has none for: a policy changed since stays. */
  async #seed(seed: Policy[]): Promise<void> {
    for (const p of seed) {
      if (await this.#state.get("policy", p.vm)) continue;
      try {
        await this.#state.commit([{ op: "put", kind: "policy", value: p, expect: 0 }], {
          asLeader: true,
        });
      } catch (e) {
        log.warn("seeding the policy of {vm} failed: {error}", {
          vm: p.vm,
          error: (e as Error).message,
        });
      }
    }
  }

  #remember(c: CatalogEntry): void {
    const list = (this.#catalog.get(c.vm) ?? []).filter((x) => x.id !== c.id);
    list.push(c);
    list.sort((a, b) => a.generation - b.generation || a.timeMs - b.timeMs);
    this.#catalog.set(c.vm, list);
  }

  async #look(signal: AbortSignal): Promise<void> {
    const policies = await this.#state.list("policy");
    const placements = new Map((await this.#state.list("placement")).map((p) => [p.value.vm, p]));
    const now = Date.now();
    const due: { p: Policy; at: Placement; newest?: CatalogEntry; run: VmRun; when: number }[] = [];
    for (const { value: p } of policies) {
      const run = this.#runs.get(p.vm) ?? { busy: false, holdUntil: 0, failures: 0 };
      this.#runs.set(p.vm, run);
      if (run.busy) continue;
      const newest = this.#catalog.get(p.vm)?.at(-1);
      const when = Math.max(dueAt(p.vm, p.everyMs, newest, this.#since), run.holdUntil);
      // A VM no agent reports, or with a host not up (its main, or a sub-host holding its pages),
      // has nothing to checkpoint now.
      const at = placements.get(p.vm)?.value;
      const hostsUp = at && [at.main, ...at.subs].every((h) => this.#hostUp(h));
      if (now >= when && hostsUp) due.push({ p, at, newest, run, when });
    }
    // The most overdue first, and a few at a time per host: after a takeover many may be due at
    // once, and they would all start together.
    for (const { p, at, newest, run } of due.sort((a, b) => a.when - b.when)) {
      const busy = this.#perHost.get(at.main) ?? 0;
      if (busy >= PER_HOST || signal.aborted) continue;
      this.#perHost.set(at.main, busy + 1);
      run.busy = true;
      const job = this.#take(p, at, newest, run).finally(() => {
        run.busy = false;
        this.#perHost.set(at.main, this.#perHost.get(at.main)! - 1);
        this.#inFlight.delete(job);
      });
      this.#inFlight.add(job);
    }
  }

  /** Checkpoints `p.vm` through its main host; an incremental one with nothing to build on
   * (a checkpoint by hand into another store moved the VM's dirty log) is taken full instead. */
  async #call(p: Policy, at: Placement, full: boolean): Promise<Reply> {
    const client = await this.#dial(at.main);
    try {
      const call = (incremental: boolean) =>
        client.call("checkpoint", {
          name: p.vm,
          mode: p.mode,
          incremental,
          replicas: p.replicas,
          keep: p.keep,
        }, { deadlineMs: CHECKPOINT_DEADLINE_MS });
      let raw: unknown;
      try {
        raw = await call(!full);
      } catch (e) {
        if (full || !FULL_NEEDED.test((e as Error).message)) throw e;
        raw = await call(false);
      }
      const r = v.safeParse(REPLY, raw);
      if (!r.success) {
        throw new Error(`the agent's reply is not a checkpoint report: ${r.issues[0].message}`);
      }
      return r.output;
    } finally {
      await client.close();
    }
  }

  async #take(p: Policy, at: Placement, newest: CatalogEntry | undefined, run: VmRun) {
    const t0 = Date.now();
    let reply: Reply;
    try {
      // A VM restored onto other hosts since its newest checkpoint starts a new chain: the old one
      // was written partly by hosts no longer in its split (the agent would refuse it).
      const moved = newest !== undefined &&
        [at.main, ...at.subs].some((h) => !newest.hosts.includes(h));
      reply = await this.#call(p, at, moved || isFull(p.incremental, p.fullEvery, newest));
    } catch (e) {
      await this.#failed(p, at, run, e);
      return;
    }
    run.failures = 0;
    run.holdUntil = 0;
    const entry: CatalogEntry = {
      vm: p.vm,
      id: reply.id,
      generation: reply.generation,
      timeMs: t0,
      hosts: [at.main, ...at.subs],
    };
    const kept = reply.retention ? new Set(reply.retention.kept) : undefined;
    const gone = (this.#catalog.get(p.vm) ?? []).filter((c) => kept && !kept.has(c.generation));
    const ms = Date.now() - t0;
    const ops: StateOp[] = [
      { op: "put", kind: "checkpoint", value: entry },
      {
        op: "event",
        event: {
          kind: "checkpoint",
          timeMs: Date.now(),
          vm: p.vm,
          host: at.main,
          checkpoint: entry.id,
          recoveryPointMs: t0,
          detail: `generation ${entry.generation} (${
            reply.parent === null ? "full" : `incremental on ${reply.parent}`
          }, ${p.mode}) in ${(ms / 1000).toFixed(1)} s`,
        },
      },
      // Entries retention removed from the store: the catalog lists only what can be restored.
      ...gone.slice(0, 40).map((c): StateOp => ({
        op: "delete",
        kind: "checkpoint",
        key: `${c.vm}/${c.id}`,
      })),
    ];
    try {
      await this.#state.commit(ops, { asLeader: true });
    } catch (e) {
      log.warn("checkpoint {id} of {vm} committed, but the catalog could not record it: {error}", {
        id: entry.id,
        vm: p.vm,
        error: (e as Error).message,
      });
      return;
    }
    for (const c of gone.slice(0, 40)) {
      this.#catalog.set(p.vm, this.#catalog.get(p.vm)!.filter((x) => x.id !== c.id));
    }
    this.#remember(entry);
    ScheduleCounters.add(this.#counters.taken, p.vm);
    log.info("checkpoint {id} of {vm}: generation {generation} in {ms} ms", {
      id: entry.id,
      vm: p.vm,
      generation: entry.generation,
      ms,
    });
  }

  /** A busy VM is skipped for a period; any other failure is retried after a backoff. */
  async #failed(p: Policy, at: Placement, run: VmRun, e: unknown): Promise<void> {
    const reason = ((e as Error).message ?? String(e)).split("\n")[0].slice(0, 900);
    const busy = e instanceof RpcError && e.code === "busy";
    let kind: string;
    if (busy) {
      run.holdUntil = Date.now() + p.everyMs;
      kind = "checkpoint-skipped";
      ScheduleCounters.add(this.#counters.skipped, p.vm);
      log.info("checkpoint of {vm} skipped, it is busy: {reason}", { vm: p.vm, reason });
    } else {
      run.failures++;
      const wait = retryDelay(run.failures, p.everyMs);
      run.holdUntil = Date.now() + wait;
      kind = "checkpoint-failed";
      ScheduleCounters.add(this.#counters.failed, p.vm);
      log.warn("checkpoint of {vm} failed ({n} in a row), retrying in {wait} ms: {reason}", {
        vm: p.vm,
        n: run.failures,
        wait,
        reason,
      });
    }
    try {
      await this.#state.commit([{
        op: "event",
        event: { kind, timeMs: Date.now(), vm: p.vm, host: at.main, detail: reason },
      }], { asLeader: true });
    } catch (err) {
      log.warn("recording {kind} of {vm} failed: {error}", {
        kind,
        vm: p.vm,
        error: (err as Error).message,
      });
    }
  }
}
