/** `dcres agent`: the per-host daemon, until SIGTERM or SIGINT; VMs keep running when it stops. */
import { getLogger } from "@logtape/logtape";
import { Agent, type AgentConfig, DEFAULT_GUEST_DIR } from "../agent/agent.ts";
import { EXIT, type GlobalOptions } from "./context.ts";
import { parseDuration, parseSize, UsageError } from "./units.ts";
import { accelFlag } from "./accel_flag.ts";
import { membershipOf } from "../agent/peers.ts";
import { keepArg } from "../ckpt/retention.ts";

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
  let file: Partial<AgentConfig> = {};
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
  const agent = await Agent.start(cfg);
  console.log(
    JSON.stringify({ ready: true, host: agent.host, addr: agent.addr, accel: cfg.accel }),
  );
  const done = Promise.withResolvers<void>();
  const stop = () => done.resolve();
  Deno.addSignalListener("SIGTERM", stop);
  Deno.addSignalListener("SIGINT", stop);
  await done.promise;
  agent.stop();
  getLogger(["dcres", "agent"]).info("agent stopped; its VMs keep running");
  return EXIT.OK;
}
