/**
 * The coordinator's failure handling (docs/COORDINATOR.md, "Failure handling"): a VM placed on a
 * host declared down is restored from its newest committed checkpoint onto hosts that are up
 * (`restore_rule.ts` picks them), once and by the leader only; what is left of the old VM on the
 * hosts that survived is stopped and released first, and a copy that its host brings back (fenced)
 * is stopped and removed, never resumed. A VM someone already runs elsewhere is adopted instead.
 */
import { getLogger } from "@logtape/logtape";
import type { LeasedVm } from "../agent/lease_handler.ts";
import type { AgentCalls } from "./agent_calls.ts";
import type { HostWatch } from "./host_watch.ts";
import { chooseRestoreTargets } from "./restore_rule.ts";
import { newestCheckpoint, ruleInput } from "./restore_source.ts";
import { restoreSplit } from "./split_restore.ts";
import { type CoordState, type Placement, StaleRevisionError, type Versioned } from "./state.ts";

const log = getLogger(["dcres", "coord", "recovery"]);

/** `n` ms for a message. */
const ms = (n: number) => `${Math.round(n)} ms`;

/** The first wait before a failed restore is tried again; it doubles up to {@link MAX_RETRY_MS}. */
const FIRST_RETRY_MS = 1000;
/** The longest wait between attempts at one VM's restore. */
const MAX_RETRY_MS = 60_000;

/** True when `vm` was paused by its VMM's fence: its host's lease lapsed, it must not run again. */
export function isFenced(vm: LeasedVm): boolean {
  return vm.pausedReason?.startsWith("fenced:") ?? false;
}

/** A restore to try again later. */
interface Retry {
  /** When (monotonic ms) to try again. */
  at: number;
  /** The wait after the next failure. */
  nextWaitMs: number;
  /** Why the last attempt failed: recorded again only when it changes. */
  why: string;
}

/** Restores VMs of failed hosts and cleans up after them; only the leader runs it. */
export class Recovery {
  readonly #state: CoordState;
  readonly #calls: AgentCalls;
  readonly #running = new Map<string, Promise<void>>();
  readonly #retry = new Map<string, Retry>();
  readonly #cleaning = new Set<string>();

  /** Recovery over `state`, reaching agents through `calls` (as the coordinator). */
  constructor(state: CoordState, calls: AgentCalls) {
    this.#state = state;
    this.#calls = calls;
  }

  /** True while `vm` is being restored or awaits another attempt: its placement is this module's. */
  busy(vm: string): boolean {
    return this.#running.has(vm) || this.#retry.has(vm);
  }

  /**
   * One look at the cluster: starts the restore of every VM placed on a host that is down (unless
   * it runs elsewhere already: then it is adopted), and the clean-up of fenced copies on hosts that
   * came back. The work goes on in the background; {@link settle} waits for it.
   */
  async tick(hosts: readonly HostWatch[], signal: AbortSignal): Promise<void> {
    const placements = new Map(
      (await this.#state.list("placement")).map((p) => [p.value.vm, p] as const),
    );
    const now = performance.now();
    const down = new Map(hosts.filter((h) => h.state === "down").map((h) => [h.addr, h]));
    const up = hosts.filter((h) => h.state === "up");
    for (const [vm, p] of placements) {
      const failed = [p.value.main, ...p.value.subs].map((a) => down.get(a)).filter((h) => !!h);
      // Its hosts are back (or it was placed anew): nothing to retry.
      if (!failed.length) this.#retry.delete(vm);
      if (!failed.length || this.#running.has(vm)) continue;
      const retry = this.#retry.get(vm);
      if (retry && now < retry.at) continue;
      const job = this.#recover(vm, p, failed, hosts, signal)
        .then(() => {
          this.#retry.delete(vm);
        }, (e) => this.#failed(vm, failed[0].addr, e, retry))
        .finally(() => this.#running.delete(vm));
      this.#running.set(vm, job);
    }
    for (const h of up) {
      for (const v of h.vms) {
        const p = placements.get(v.name)?.value;
        if (!p || !isFenced(v) || this.busy(v.name)) continue;
        if (p.main === h.addr || p.subs.includes(h.addr)) continue;
        this.#cleanUp(h.addr, v.name, p);
      }
    }
  }

  /** Waits for the work under way to end. */
  async settle(): Promise<void> {
    await Promise.allSettled([...this.#running.values()]);
  }

  /** Restores `vm` after `failed` (its hosts that are down), unless `signal` (the leadership) ends. */
  async #recover(
    vm: string,
    p: Versioned<Placement>,
    failed: HostWatch[],
    hosts: readonly HostWatch[],
    signal: AbortSignal,
  ): Promise<void> {
    const old = p.value;
    const lost = failed.map((h) => h.addr);
    const up = hosts.filter((h) => h.state === "up");
    const survivors = up.map((h) => h.addr);
    // Someone already runs it, unfenced, on another host that is up: theirs stands.
    const elsewhere = up.find((h) => h.addr !== old.main && runsHere(h, vm));
    if (elsewhere) {
      const subs = splitAddrs(hosts, elsewhere, vm);
      await this.#commit(vm, p.rev, { vm, main: elsewhere.addr, subs }, {
        kind: "adopted",
        host: elsewhere.addr,
        detail: `${vm} runs on ${elsewhere.name} already, after ${lost.join(", ")} failed`,
      });
      log.info("{vm} adopted on {host}", { vm, host: elsewhere.name });
      return;
    }
    // Claimed first (its revision rises), so a coordinator that read the same placement fails.
    const claim = await this.#state.commit([
      { op: "put", kind: "placement", value: old, expect: p.rev },
    ], { asLeader: true });
    const t0 = performance.now();
    const src = await newestCheckpoint(this.#calls, vm, survivors);
    const t1 = performance.now();
    // A leader deposed meanwhile stops before it touches a VM.
    signal.throwIfAborted();
    await this.#release(vm, old, lost);
    const t2 = performance.now();
    const choice = chooseRestoreTargets(ruleInput(src, survivors, [old.main, ...old.subs]));
    if (!choice) throw new Error("no host is up to restore onto");
    signal.throwIfAborted();
    const down = hosts.filter((h) => h.state === "down").map((h) => h.addr);
    const r = await restoreSplit(
      this.#calls,
      src.source,
      src.plan,
      { name: vm, lazy: true, down },
      { assign: choice.assign },
    );
    const steps = `found in ${ms(t1 - t0)}, old parts released in ${
      ms(t2 - t1)
    }, ${r.copied.files} files copied in ${ms(r.copied.ms)}, sub-hosts loaded ${
      ms(r.loadMs)
    } after the copies began, restored in ${ms(r.totalMs)}`;
    // The guest runs again: counted from the failed host's last answer.
    // A lazy restore answers once every page is in; the guest ran from `resumeMs` on.
    const lag = Number(r.restore.residentMs) - Number(r.restore.resumeMs);
    const recoveryMs = Math.round(
      performance.now() - Math.min(...failed.map((h) => h.lastOkAt)) -
        (Number.isFinite(lag) && lag > 0 ? lag : 0),
    );
    const catalog = (await this.#state.list("checkpoint", vm).catch(() => []))
      .reduce((n, c) => Math.max(n, c.value.generation), 0);
    const behind = catalog > Number(src.plan.generation.slice(1))
      ? `; the catalog's newest, generation ${catalog}, is not whole on the survivors`
      : "";
    await this.#commit(vm, claim, { vm, main: choice.main, subs: choice.subs }, {
      kind: "restored",
      host: lost[0],
      recoveryMs,
      checkpoint: src.plan.id,
      recoveryPointMs: src.pointMs,
      detail: `${vm} restored from ${src.plan.store}/${src.plan.generation} onto ${choice.main}${
        choice.subs.length ? ` with ${choice.subs.join(", ")}` : ""
      } after ${lost.join(", ")} failed (${steps})${behind}`,
    });
    log.info("{vm} restored onto {main} in {ms} ms", { vm, main: choice.main, ms: recoveryMs });
  }

  /**
   * Stops what is left of `vm` on the hosts of `old` that survived (its main, paused for a sub-host
   * it cannot reach, must never resume) and releases the pages its sub-hosts hold for it.
   */
  async #release(vm: string, old: Placement, lost: string[]): Promise<void> {
    if (!lost.includes(old.main)) await this.#stop(old.main, vm);
    await Promise.all(
      old.subs.filter((s) => !lost.includes(s)).map(async (s) => {
        try {
          await this.#calls.call(s, "pages.drop", { vm }, { deadlineMs: 10_000 });
        } catch (e) {
          log.warn("releasing {vm}'s pages on {host}: {error}", {
            vm,
            host: s,
            error: (e as Error).message,
          });
        }
      }),
    );
  }

  /** Stops `vm` on `host`; one that is not there is stopped already. */
  async #stop(host: string, vm: string): Promise<void> {
    try {
      await this.#calls.call(host, "vm.stop", { name: vm }, { deadlineMs: 30_000 });
    } catch (e) {
      const gone = await this.#calls.call<Array<{ name: string }>>(host, "vm.ls", {})
        .then((l) => !l.some((v) => v.name === vm), () => false);
      if (!gone) throw new Error(`stopping ${vm} on ${host}: ${(e as Error).message}`);
    }
  }

  /** Stops and removes the fenced copy of `vm` that `host` brought back. */
  #cleanUp(host: string, vm: string, p: Placement): void {
    const key = `${host} ${vm}`;
    if (this.#cleaning.has(key)) return;
    this.#cleaning.add(key);
    this.#stop(host, vm).then(
      () =>
        this.#state.commit([{
          op: "event",
          event: {
            kind: "cleaned-up",
            timeMs: Date.now(),
            vm,
            host,
            detail:
              `the fenced copy of ${vm} on ${host} was stopped and removed; it runs on ${p.main}`,
          },
        }], { asLeader: true }).then(() => {}),
      (e) => log.warn("cleaning up {vm} on {host}: {error}", { vm, host, error: e.message }),
    ).finally(() => this.#cleaning.delete(key));
  }

  /** Puts `vm`'s placement (at revision `rev` as read) and appends `event`, as the leader. */
  async #commit(
    vm: string,
    rev: number,
    value: Placement,
    event: { kind: string; host: string; detail: string } & Record<string, unknown>,
  ): Promise<void> {
    await this.#state.commit([
      { op: "put", kind: "placement", value, expect: rev },
      {
        op: "event",
        event: { ...event, vm, timeMs: Date.now(), detail: event.detail.slice(0, 1000) },
      },
    ], { asLeader: true });
  }

  /** Records a failed restore and when it is tried again. */
  async #failed(vm: string, host: string, e: unknown, last?: Retry): Promise<void> {
    if (e instanceof StaleRevisionError) {
      // Another coordinator or a report changed the placement: the next look decides again.
      this.#retry.delete(vm);
      return;
    }
    const wait = last?.nextWaitMs ?? FIRST_RETRY_MS;
    const why = (e as Error).message.split("\n")[0].slice(0, 900);
    this.#retry.set(vm, {
      at: performance.now() + wait,
      nextWaitMs: Math.min(MAX_RETRY_MS, wait * 2),
      why,
    });
    log.warn("restoring {vm} failed, again in {s} s: {why}", { vm, s: wait / 1000, why });
    if (last?.why === why) return;
    await this.#state.commit([{
      op: "event",
      event: { kind: "restore-failed", timeMs: Date.now(), vm, host, detail: why },
    }], { asLeader: true }).catch(() => {});
  }
}

/** True when `h` reported `vm` running, not fenced. */
export function runsHere(h: HostWatch, vm: string): boolean {
  return h.vms.some((v) => v.name === vm && v.state === "running" && !isFenced(v));
}

/**
 * The agent addresses of the sub-hosts `h` reported for `vm`. Its VMM names its own part "main"
 * and the others by address (certificate names are mapped too).
 */
export function splitAddrs(hosts: readonly HostWatch[], h: HostWatch, vm: string): string[] {
  const split = h.vms.find((v) => v.name === vm)?.split ?? [];
  const addrOf = new Map(hosts.filter((x) => x.certHost).map((x) => [x.certHost!, x.addr]));
  return split.filter((s) => s !== "main" && s !== h.certHost).map((s) => addrOf.get(s) ?? s)
    .filter((s) => s !== h.addr);
}
