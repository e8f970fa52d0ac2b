/** An agent's Prometheus metrics and the store usage its status reports. */
import { join } from "node:path";
import { listGenerations } from "../ckpt/inspect.ts";
import { metricFamily } from "../codec/prometheus.ts";
import { surveyVms } from "../vmm/control/client.ts";
import type { ScrubCounters } from "./scrub.ts";
import { safeReadDir } from "./paths.ts";

/** Bytes each checkpoint store of this agent holds. */
export function storeUsage(
  dataDir: string,
): Array<{ store: string; generations: number; bytes: number }> {
  const root = join(dataDir, "ckpt");
  const out: Array<{ store: string; generations: number; bytes: number }> = [];
  for (const e of safeReadDir(root)) {
    if (!e.isDirectory) continue;
    const gens = listGenerations(join(root, e.name));
    out.push({
      store: e.name,
      generations: gens.length,
      bytes: gens.reduce((a, g) => a + (g.bytes ?? 0), 0),
    });
  }
  return out;
}

/** What an agent's metrics are read from. */
export interface MetricsSources {
  /** Where its VMs' control sockets are. */
  stateDir: string;
  /** Its data directory (checkpoint stores under `ckpt/`). */
  dataDir: string;
  /** Connections refused at authentication so far. */
  refused: number;
  /** When it started (performance.now()). */
  t0: number;
  /** Its scrub and repair counters. */
  scrubs: ScrubCounters;
}

/** How long the metrics wait for each VMM before counting it unanswered. */
const METRICS_VMS_WITHIN_MS = 2000;

/** The agent's Prometheus metrics, as text. */
export async function metricsText(o: MetricsSources): Promise<string> {
  const { t0, scrubs } = o;
  // Bounded below a scrape's timeout: a VMM that hangs is counted, not waited for.
  const { vms, unanswered } = await surveyVms(o.stateDir, METRICS_VMS_WITHIN_MS);
  const paged = vms.filter((v) => v.paging);
  const m = metricFamily;
  const lines = [
    ...m("dcres_agent_uptime_seconds", "gauge", "Seconds since the agent started.", [
      { value: Number(((performance.now() - t0) / 1000).toFixed(1)) },
    ]),
    ...m("dcres_vms", "gauge", "VMs this agent supervises.", [{ value: vms.length }]),
    ...m("dcres_vms_unanswered", "gauge", "VMs whose VMM did not answer in time.", [
      { value: unanswered.length },
    ]),
    ...m(
      "dcres_vm_memory_bytes",
      "gauge",
      "Guest RAM per VM.",
      vms.map((v) => ({ labels: { vm: v.name }, value: v.memSize })),
    ),
    ...m(
      "dcres_vm_info",
      "gauge",
      "A VM's guest and the accelerator it runs on (always 1).",
      vms.map((v) => ({ labels: { vm: v.name, guest: v.guest, accel: v.accel }, value: 1 })),
    ),
    ...m(
      "dcres_vm_page_ins_total",
      "counter",
      "Pages a split VM brought to its main host.",
      paged.map((v) => ({ labels: { vm: v.name }, value: v.paging!.pageIns })),
    ),
    ...m(
      "dcres_vm_page_outs_total",
      "counter",
      "Pages a split VM sent to its sub-hosts.",
      paged.map((v) => ({ labels: { vm: v.name }, value: v.paging!.pageOuts })),
    ),
    ...m(
      "dcres_vm_resident_pages",
      "gauge",
      "Pages of a split VM each host holds.",
      paged.flatMap((v) =>
        Object.entries(v.paging!.residentPages).map(([host, value]) => ({
          labels: { vm: v.name, host },
          value,
        }))
      ),
    ),
    ...m(
      "dcres_vm_fault_latency_us",
      "gauge",
      "Remote fault service time of a split VM (recent faults).",
      paged.flatMap((v) => [
        { labels: { vm: v.name, quantile: "0.5" }, value: v.paging!.faultLatencyUs.p50 },
        { labels: { vm: v.name, quantile: "0.99" }, value: v.paging!.faultLatencyUs.p99 },
      ]),
    ),
    ...m(
      "dcres_refused_connections_total",
      "counter",
      "Connections refused at authentication.",
      [{ value: o.refused }],
    ),
    ...m(
      "dcres_checkpoint_store_bytes",
      "gauge",
      "Bytes held per checkpoint store.",
      storeUsage(o.dataDir).map((s) => ({ labels: { store: s.store }, value: s.bytes })),
    ),
    ...scrubs.metrics(),
  ];
  return lines.join("\n") + "\n";
}
