/**
 * `dcres agent`: the per-host daemon, until SIGTERM or SIGINT; VMs keep running when it stops. With
 * `--coordinator FILE` (or `coordinator` in its config file) the same process runs that coordinator.
 */
import { getLogger } from "@logtape/logtape";
import { Agent } from "../agent/agent.ts";
import { EXIT, type GlobalOptions } from "./context.ts";
import { type CoordConfig, parseCoordConfig } from "../coord/config.ts";
import { startCoordinator } from "./coord.ts";
import { UsageError } from "./units.ts";
import {
  agentConfigOf,
  type AgentFile,
  type AgentFlags,
  coordinatorPath,
  loadAgentFile,
} from "./agent_config.ts";

export type { AgentFlags } from "./agent_config.ts";

/** The coordinator config the flag or the file names, checked, if either does. */
function coordinatorConfig(f: AgentFlags, file: AgentFile): CoordConfig | undefined {
  const what = f.coordinator !== undefined ? "--coordinator" : `--config ${f.config}: coordinator`;
  const path = f.coordinator !== undefined
    ? coordinatorPath(f.coordinator, what)
    : file.coordinator;
  if (path === undefined) return undefined;
  let text: string;
  try {
    text = Deno.readTextFileSync(path);
  } catch (e) {
    throw new UsageError(`${what} ${path}: ${(e as Error).message}`);
  }
  return parseCoordConfig(text, path);
}

/** Runs the agent. */
export async function agentCommand(_g: GlobalOptions, f: AgentFlags): Promise<number> {
  // The file is checked whole, then each flag given over it, before anything starts.
  const file: AgentFile = f.config !== undefined ? loadAgentFile(f.config) : {};
  const cfg = agentConfigOf(f, file);
  // Checked before the agent starts: a bad coordinator config starts nothing.
  const coordCfg = coordinatorConfig(f, file);
  const agent = await Agent.start(cfg);
  const stop = new AbortController();
  const onSignal = () => stop.abort();
  Deno.addSignalListener("SIGTERM", onSignal);
  Deno.addSignalListener("SIGINT", onSignal);
  try {
    const coord = coordCfg && await startCoordinator(coordCfg, stop.signal);
    console.log(JSON.stringify({
      ready: true,
      host: agent.host,
      addr: agent.addr,
      accel: cfg.accel,
      ...(coord ? { coordinator: { id: coord.ready.id, store: coord.ready.store } } : {}),
    }));
    const stopped = new Promise((r) => stop.signal.addEventListener("abort", r, { once: true }));
    // A coordinator that fails takes the agent down with it, so the process exits with its error
    // (and systemd restarts both) rather than living on as an agent alone.
    await Promise.race(coord ? [stopped, coord.done] : [stopped]);
    await coord?.done;
  } finally {
    stop.abort();
    Deno.removeSignalListener("SIGTERM", onSignal);
    Deno.removeSignalListener("SIGINT", onSignal);
    agent.stop();
  }
  getLogger(["dcres", "agent"]).info("agent stopped; its VMs keep running");
  return EXIT.OK;
}
