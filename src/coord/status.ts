/**
 * What `dcres coord status` shows, read from the store alone (so it works with the coordinator
 * stopped, and from any host that reaches the store): each configured host's state (its newest
 * state event), its lease, when it last answered, the VMs placed on it, each VM's policy and
 * recovery point, and recent events.
 */
import type { CoordConfig } from "./config.ts";
import type { HostState } from "./host_state.ts";
import { formatProtection, type VmProtection, vmProtection } from "./protection.ts";
import type { CoordEvent, CoordState, LeaderInfo } from "./state.ts";

/** One host in the status. */
export interface HostStatus {
  /** Its name in the config. */
  name: string;
  /** Its agent's address. */
  addr: string;
  /** Its state; "unknown" before the coordinator has judged it. */
  state: HostState | "unknown";
  /** Ms since it last answered a heartbeat (wall clock), when it ever has. */
  lastHeartbeatAgeMs?: number;
  /** Its lease: fencing epoch and when the coordinator takes it for lapsed (ms since the epoch). */
  lease?: { epoch: number; expiresMs: number };
  /** VMs whose main host it is, with their sub-hosts. */
  vms: { vm: string; subs: string[] }[];
}

/** The whole status. */
export interface CoordStatus {
  /** The store. */
  store: string;
  /** The leading coordinator, if any. */
  leader?: LeaderInfo;
  /** Every configured host. */
  hosts: HostStatus[];
  /** Every VM with a policy or a checkpoint: its policy and recovery point. */
  vms: VmProtection[];
  /** The newest events, oldest first. */
  events: CoordEvent[];
}

/** The status of `cfg`'s cluster as `state` records it at wall-clock `now`. */
export async function coordStatus(
  cfg: CoordConfig,
  state: CoordState,
  now: number,
  eventCount = 20,
): Promise<CoordStatus> {
  const leases = new Map((await state.list("lease")).map((l) => [l.value.host, l.value]));
  const placements = (await state.list("placement")).map((p) => p.value);
  // The coordinator writes a lease's expiry as its last grant plus this much (GrantedLease).
  const t = cfg.lease;
  const leaseSpan = (t.ttlMs + t.fenceMs) * (1 + t.drift);
  const hosts = cfg.agents.map((a): HostStatus => {
    const lease = leases.get(a.addr);
    return {
      name: a.name,
      addr: a.addr,
      state: lease?.state ?? "unknown",
      ...(lease
        ? {
          lease: { epoch: lease.epoch, expiresMs: lease.expiresMs },
          lastHeartbeatAgeMs: Math.max(0, Math.round(now - (lease.expiresMs - leaseSpan))),
        }
        : {}),
      vms: placements.filter((p) => p.main === a.addr).map((p) => ({ vm: p.vm, subs: p.subs })),
    };
  });
  return {
    store: state.where,
    leader: await state.leader(),
    hosts,
    vms: await vmProtection(state, now),
    events: await state.events({ limit: eventCount }),
  };
}

/** The status for a person: one line per host, then the events. */
export function formatCoordStatus(s: CoordStatus, now: number): string[] {
  const secs = (ms: number) => `${(ms / 1000).toFixed(1)}s`;
  const lines = [
    `store ${s.store}, leader ${s.leader ? `${s.leader.id} (term ${s.leader.term})` : "none"}`,
  ];
  for (const h of s.hosts) {
    const beat = h.lastHeartbeatAgeMs === undefined
      ? "never answered"
      : `answered ${secs(h.lastHeartbeatAgeMs)} ago`;
    const lease = h.lease
      ? `lease epoch ${h.lease.epoch} ${
        h.lease.expiresMs > now ? `until +${secs(h.lease.expiresMs - now)}` : "lapsed"
      }`
      : "no lease";
    const vms = h.vms.length
      ? h.vms.map((v) => v.subs.length ? `${v.vm} (subs ${v.subs.join(",")})` : v.vm).join(" ")
      : "no VMs";
    lines.push(`${h.name} ${h.addr} ${h.state}, ${beat}, ${lease}, ${vms}`);
  }
  lines.push(...s.vms.map(formatProtection));
  for (const e of s.events) {
    lines.push(
      `  ${new Date(e.timeMs).toISOString()} ${e.kind}${e.host ? ` ${e.host}` : ""}${
        e.vm ? ` ${e.vm}` : ""
      }${recoveryText(e)}${e.detail ? `: ${e.detail}` : ""}`,
    );
  }
  return lines;
}

/** A restore's recovery time and point, for its event's line. */
function recoveryText(e: CoordEvent): string {
  const parts = [
    e.recoveryMs === undefined ? "" : `recovered in ${(e.recoveryMs / 1000).toFixed(1)}s`,
    e.recoveryPointMs === undefined
      ? ""
      : `recovery point ${new Date(e.recoveryPointMs).toISOString()}${
        e.checkpoint ? ` (checkpoint ${e.checkpoint.slice(0, 12)})` : ""
      }`,
  ].filter(Boolean);
  return parts.length ? ` (${parts.join(", ")})` : "";
}
