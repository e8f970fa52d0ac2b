/**
 * `dcres agent`: the per-host daemon, until SIGTERM or SIGINT; VMs keep running when it stops. With
 * `--coordinator FILE` (or `coordinator` in its config file) the same process runs that coordinator.
 */
import { getLogger } from "@logtape/logtape";
import { Agent, type AgentConfig, DEFAULT_GUEST_DIR } from "../agent/agent.ts";
import { EXIT, type GlobalOptions } from "./context.ts";
import { parseDuration, parseSize, UsageError } from "./units.ts";
import { accelFlag } from "./accel_flag.ts";
import { membershipOf } from "../agent/peers.ts";
import { keepArg } from "../ckpt/retention.ts";
import { type CoordConfig, parseCoordConfig } from "../coord/config.ts";
import { startCoordinator } from "./coord.ts";

/** Flags of `dcres agent` (each overrides the config file). */
export interface AgentFlags {
  config?: string;
  listen?: string;
  dataDir?: string;
  identity?: string;
  metricsPort?: string;
  pageStore?: string;
  accel?: string;
  guestDir?: string;
  peers?: string;
  zone?: string;
  replicas?: string;
  scrubRate?: string;
  scrubEvery?: string;
  /** A coordinator's config: run that coordinator in this process too. */
  coordinator?: string;
}

/** The agent's config file: its settings, and a coordinator to run beside it. */
type AgentFile = Partial<AgentConfig> & { coordinator?: unknown };

/** The coordinator config the flag or the file names, checked, if either does. */
function coordinatorConfig(f: AgentFlags, file: AgentFile): CoordConfig | undefined {
  const path = f.coordinator ?? file.coordinator;
  if (path === undefined) return undefined;
  const what = f.coordinator !== undefined ? "--coordinator" : `--config ${f.config}: coordinator`;
  if (typeof path !== "string" || !path) {
    throw new UsageError(`${what} must be the path of a coordinator's config file`);
  }
  let text: string;
  try {
    text = Deno.readTextFileSync(path);
  } catch (e) {
    throw new UsageError(`${what} ${path}: ${(e as Error).message}`);
  }
  return parseCoordConfig(text, path);
}

/** The config file's checkpointKeep, checked. */
function configKeep(path: string | undefined, v: unknown): number | undefined {
  try {
    return keepArg(v, "checkpointKeep");
  } catch (e) {
    throw new UsageError(`--config ${path}: ${(e as Error).message}`);
  }
}

/** `--scrub-rate`: SIZE or SIZE/s in bytes per second, or `off` (0). */
function scrubRate(text: string): number {
  return text === "off" ? 0 : parseSize("--scrub-rate", text.replace(/\/s$/, ""));
}

/** Runs the agent. */
export async function agentCommand(_g: GlobalOptions, f: AgentFlags): Promise<number> {
  let file: AgentFile = {};
  if (f.config) {
    try {
      file = JSON.parse(Deno.readTextFileSync(f.config));
    } catch (e) {
      throw new UsageError(`--config ${f.config}: ${(e as Error).message}`);
    }
  }
  const cfg: AgentConfig = {
    listen: f.listen ?? file.listen ?? "127.0.0.1:7400",
    dataDir: f.dataDir ?? file.dataDir ?? "/var/lib/dcres",
    identityDir: f.identity ?? file.identityDir ?? "/etc/dcres/identity",
    metricsPort: f.metricsPort ? Number(f.metricsPort) : file.metricsPort,
    pageStoreBytes: f.pageStore ? parseSize("--page-store", f.pageStore) : file.pageStoreBytes,
    accel: accelFlag(f.accel ?? file.accel),
    recheckMs: file.recheckMs,
    storeQuotaBytes: file.storeQuotaBytes,
    checkpointKeep: configKeep(f.config, file.checkpointKeep),
    guestDir: f.guestDir ?? file.guestDir ?? DEFAULT_GUEST_DIR,
    ...membershipOf(
      {
        peers: f.peers ?? file.peers,
        zone: f.zone ?? file.zone,
        replicas: f.replicas ?? file.replicas,
      },
      {
        peers: f.peers !== undefined ? "--peers" : `${f.config}: peers`,
        zone: f.zone !== undefined ? "--zone" : `${f.config}: zone`,
        replicas: f.replicas !== undefined ? "--replicas" : `${f.config}: replicas`,
      },
    ),
    scrubRateBytes: f.scrubRate ? scrubRate(f.scrubRate) : file.scrubRateBytes,
    scrubEveryMs: f.scrubEvery ? parseDuration("--scrub-every", f.scrubEvery) : file.scrubEveryMs,
  };
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
