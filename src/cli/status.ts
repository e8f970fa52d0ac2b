/** `dcres status`: this agent's VMs, checkpoint stores, disk use and peers. */
import { join } from "node:path";
import { callLocal } from "../agent/local.ts";
import type { VmInfo } from "../vmm/control/protocol.ts";
import { EXIT, type GlobalOptions, report } from "./context.ts";
import { agentAddr, remoteCall } from "./remote.ts";
import { fmtBytes } from "./units.ts";

interface Status {
  host: string;
  version: string;
  addr: string;
  /** Accelerator of the VMs it starts when a request names none (absent from older agents). */
  accel?: string;
  uptimeMs: number;
  vms: VmInfo[];
  /** VMs whose VMM did not answer in time (absent when none). */
  unanswered?: string[];
  checkpoints: Array<{ store: string; generations: number; bytes: number }>;
  refusedConnections: number;
  peers: string[];
}

/** Runs `dcres status` against --agent, or the local agent's socket in --data-dir. */
export async function statusCommand(g: GlobalOptions, f: { dataDir: string }): Promise<number> {
  const s = agentAddr(g)
    ? await remoteCall<Status>(g, "status")
    : await callLocal<Status>(join(f.dataDir, "agent.sock"), "status", {});
  report(g, s, () =>
    [
      `agent ${s.host} (dcres ${s.version}) on ${s.addr}, up ${Math.round(s.uptimeMs / 1000)} s${
        s.accel ? `, starts VMs with --accel ${s.accel}` : ""
      }`,
      `VMs: ${
        s.vms.length
          ? s.vms.map((v) =>
            `${v.name} (${v.guest} on ${v.accel ?? "kvm"}, ${fmtBytes(v.memSize)}, ${v.state})`
          ).join(", ")
          : "none"
      }`,
      ...(s.unanswered?.length
        ? [
          `VMs not answering: ${
            s.unanswered.join(", ")
          } (their VMMs may hang: see their logs, or 'dcres vm stop NAME')`,
        ]
        : []),
      `checkpoints: ${
        s.checkpoints.length
          ? s.checkpoints.map((c) =>
            `${c.store}: ${c.generations} generation(s), ${fmtBytes(c.bytes)}`
          ).join("; ")
          : "none"
      }`,
      `disk used by checkpoints: ${fmtBytes(s.checkpoints.reduce((a, c) => a + c.bytes, 0))}`,
      `peers connected: ${
        s.peers.length ? s.peers.join(", ") : "none"
      }; connections refused: ${s.refusedConnections}`,
    ].join("\n"));
  return EXIT.OK;
}
