/** `dcres vm ls|stop|pause|resume`. */
import { listVms, request } from "../vmm/control/client.ts";
import type { VmInfo } from "../vmm/control/protocol.ts";
import { agentAddr, remoteCall } from "./remote.ts";
import { EXIT, type GlobalOptions, report, stateDirOf } from "./context.ts";
import { fmtBytes } from "./units.ts";
import { PAGE_SIZE } from "../accel/accel.ts";

/** `dcres vm ls`. */
export async function vmLs(g: GlobalOptions): Promise<number> {
  const vms = agentAddr(g) ? await remoteCall<VmInfo[]>(g, "vm.ls") : await listVms(stateDirOf(g));
  report(g, vms, () => {
    if (vms.length === 0) return "no VMs running";
    const rows = vms.map((v) => [
      v.name,
      v.guest,
      v.accel,
      fmtBytes(v.memSize),
      String(v.vcpus),
      v.state,
      String(v.pid),
      `${Math.round(v.uptimeMs / 1000)}s`,
      v.memstamp ? `written ${v.memstamp.written}, ticks ${v.memstamp.ticks.join("/")}` : "",
    ]);
    const notes = vms.flatMap((v) => {
      const p = v.paging;
      if (!p) return [];
      const where = Object.entries(p.residentPages).map(([h, n]) =>
        `${h} ${fmtBytes(n * PAGE_SIZE)}`
      );
      return [
        `${v.name}: split: ${where.join(", ")}; ${p.pageIns} page-ins, ${p.pageOuts} page-outs, ` +
        `fault p50 ${p.faultLatencyUs.p50} us, p99 ${p.faultLatencyUs.p99} us`,
        ...(p.blocked ? [`${v.name}: ${p.blocked}`] : []),
      ];
    });
    return [
      table(["NAME", "GUEST", "ACCEL", "MEM", "VCPUS", "STATE", "PID", "UP", "GUEST STATUS"], rows),
      ...notes,
    ].join("\n");
  });
  return EXIT.OK;
}

/** `dcres vm check NAME`: a split VM's pages each have exactly one holder. */
export async function vmCheck(g: GlobalOptions, name: string): Promise<number> {
  const r = agentAddr(g)
    ? await remoteCall<OwnershipCheck>(g, "vm.check", { name })
    : await request<OwnershipCheck>(stateDirOf(g), name, { op: "paging.check" });
  report(
    g,
    { name, ...r },
    () =>
      r.ok
        ? `OK: ${name}: each of ${r.pages} pages has one holder (${
          Object.entries(r.holders).map(([h, n]) => `${h} ${n}`).join(", ")
        })`
        : `BAD: ${name}: ${r.problems.join("; ")}`,
  );
  return r.ok ? EXIT.OK : EXIT.FAILURE;
}

/** What `vm check` reports. */
interface OwnershipCheck {
  ok: boolean;
  pages: number;
  holders: Record<string, number>;
  problems: string[];
}

/** `dcres vm stop|pause|resume NAME`. */
export async function vmControl(
  g: GlobalOptions,
  op: "stop" | "pause" | "resume",
  name: string,
): Promise<number> {
  const result = agentAddr(g)
    ? await remoteCall<{ pauseMs?: number }>(g, `vm.${op}`, { name })
    : await request<{ pauseMs?: number } | null>(stateDirOf(g), name, { op });
  report(
    g,
    { name, op, ...(result ?? {}) },
    () =>
      op === "pause"
        ? `${name} paused in ${result?.pauseMs?.toFixed(2)} ms`
        : `${name}: ${op === "stop" ? "stopped" : "resumed"}`,
  );
  return EXIT.OK;
}

/** Left-aligned text table. */
export function table(head: string[], rows: string[][]): string {
  const w = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)));
  const line = (r: string[]) => r.map((c, i) => c.padEnd(w[i])).join("  ").trimEnd();
  return [line(head), ...rows.map(line)].join("\n");
}
