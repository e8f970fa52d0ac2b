/** An agent's Prometheus metrics and the store usage its status reports. */
import { join } from "node:path";
import { listGenerations } from "../ckpt/inspect.ts";
import { listVms } from "../vmm/control/client.ts";
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

/** The agent's Prometheus metrics, as text. */
export async function metricsText(o: MetricsSources): Promise<string> {
  const { t0, scrubs } = o;
  const vms = await listVms(o.stateDir);
  const paged = vms.filter((v) => v.paging);
  const lines = [
    "# HELP dcres_agent_uptime_seconds Seconds since the agent started.",
    "# TYPE dcres_agent_uptime_seconds gauge",
    `dcres_agent_uptime_seconds ${((performance.now() - t0) / 1000).toFixed(1)}`,
    "# HELP dcres_vms VMs this agent supervises.",
    "# TYPE dcres_vms gauge",
    `dcres_vms ${vms.length}`,
    "# HELP dcres_vm_memory_bytes Guest RAM per VM.",
    "# TYPE dcres_vm_memory_bytes gauge",
    ...vms.map((v) => `dcres_vm_memory_bytes{vm="${v.name}"} ${v.memSize}`),
    "# HELP dcres_vm_info A VM's guest and the accelerator it runs on (always 1).",
    "# TYPE dcres_vm_info gauge",
    ...vms.map((v) => `dcres_vm_info{vm="${v.name}",guest="${v.guest}",accel="${v.accel}"} 1`),
    "# HELP dcres_vm_page_ins_total Pages a split VM brought to its main host.",
    "# TYPE dcres_vm_page_ins_total counter",
    ...paged.map((v) => `dcres_vm_page_ins_total{vm="${v.name}"} ${v.paging!.pageIns}`),
    "# HELP dcres_vm_page_outs_total Pages a split VM sent to its sub-hosts.",
    "# TYPE dcres_vm_page_outs_total counter",
    ...paged.map((v) => `dcres_vm_page_outs_total{vm="${v.name}"} ${v.paging!.pageOuts}`),
    "# HELP dcres_vm_resident_pages Pages of a split VM each host holds.",
    "# TYPE dcres_vm_resident_pages gauge",
    ...paged.flatMap((v) =>
      Object.entries(v.paging!.residentPages).map(([h, n]) =>
        `dcres_vm_resident_pages{vm="${v.name}",host="${h}"} ${n}`
      )
    ),
    "# HELP dcres_vm_fault_latency_us Remote fault service time of a split VM (recent faults).",
    "# TYPE dcres_vm_fault_latency_us gauge",
    ...paged.flatMap((v) => [
      `dcres_vm_fault_latency_us{vm="${v.name}",quantile="0.5"} ${v.paging!.faultLatencyUs.p50}`,
      `dcres_vm_fault_latency_us{vm="${v.name}",quantile="0.99"} ${v.paging!.faultLatencyUs.p99}`,
    ]),
    "# HELP dcres_refused_connections_total Connections refused at authentication.",
    "# TYPE dcres_refused_connections_total counter",
    `dcres_refused_connections_total ${o.refused}`,
    "# HELP dcres_checkpoint_store_bytes Bytes held per checkpoint store.",
    "# TYPE dcres_checkpoint_store_bytes gauge",
    ...storeUsage(o.dataDir).map((s) =>
      `dcres_checkpoint_store_bytes{store="${s.store}"} ${s.bytes}`
    ),
    ...scrubs.metrics(),
  ];
  return lines.join("\n") + "\n";
}
