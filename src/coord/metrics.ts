/** The coordinator's Prometheus metrics: each VM's recovery-point age and its checkpoint counts. */
import { metricFamily } from "../codec/prometheus.ts";
import { vmProtection } from "./protection.ts";
import type { ScheduleCounters } from "./scheduler.ts";
import type { CoordState } from "./state.ts";

/** The metrics as text, read from `state` (ages) and `counters` (this process's checkpoints). */
export async function coordMetricsText(
  state: CoordState,
  counters: ScheduleCounters,
  leading: boolean,
): Promise<string> {
  const vms = await vmProtection(state, Date.now());
  const counts = (m: Map<string, number>) =>
    [...m].map(([vm, value]) => ({ labels: { vm }, value }));
  return [
    ...metricFamily("dcres_coord_leader", "gauge", "1 while this coordinator leads.", [
      { value: leading ? 1 : 0 },
    ]),
    ...metricFamily(
      "dcres_coord_recovery_point_age_seconds",
      "gauge",
      "Seconds since a VM's newest committed checkpoint (its recovery point).",
      vms.filter((v) => v.recoveryPointAgeMs !== undefined).map((v) => ({
        labels: { vm: v.vm },
        value: v.recoveryPointAgeMs! / 1000,
      })),
    ),
    ...metricFamily(
      "dcres_coord_policy_every_seconds",
      "gauge",
      "A VM's checkpoint period by its policy.",
      vms.filter((v) => v.policy).map((v) => ({
        labels: { vm: v.vm },
        value: v.policy!.everyMs / 1000,
      })),
    ),
    ...metricFamily(
      "dcres_coord_checkpoints_total",
      "counter",
      "Scheduled checkpoints taken and catalogued by this coordinator.",
      counts(counters.taken),
    ),
    ...metricFamily(
      "dcres_coord_checkpoint_failures_total",
      "counter",
      "Scheduled checkpoints that failed (each retried with backoff).",
      counts(counters.failed),
    ),
    ...metricFamily(
      "dcres_coord_checkpoint_skips_total",
      "counter",
      "Scheduled checkpoints skipped because the VM was busy with another operation.",
      counts(counters.skipped),
    ),
  ].join("\n") + "\n";
}
