/**
 * `dcres coord`: the coordinator daemon, until SIGTERM or SIGINT (docs/COORDINATOR.md), and
 * `dcres coord status`, read from its store whether or not it runs.
 */
import { getLogger } from "@logtape/logtape";
import { dirname } from "node:path";
import { existsSync } from "node:fs";
import { type CoordConfig, loadCoordConfig } from "../coord/config.ts";
import { Coordinator } from "../coord/daemon.ts";
import { openState } from "../coord/open_state.ts";
import type { CoordState } from "../coord/state.ts";
import { coordMetricsText } from "../coord/metrics.ts";
import { coordStatus, formatCoordStatus } from "../coord/status.ts";
import { checkIdentity, type Identity, verifyPeerCertificate } from "../net/identity.ts";
import { RpcClient } from "../net/quic.ts";
import { ConfigError } from "../rpc/errors.ts";
import { EXIT, type GlobalOptions, report } from "./context.ts";
import { UsageError } from "./units.ts";

/** Flags of `dcres coord` and `dcres coord status`. */
export interface CoordFlags {
  /** The config file. */
  config?: string;
}

/** Runs the coordinator until SIGTERM or SIGINT. */
export async function coordCommand(_g: GlobalOptions, f: CoordFlags): Promise<number> {
  if (!f.config) throw new UsageError("dcres coord: give --config FILE (docs/COORDINATOR.md)");
  const cfg = loadCoordConfig(f.config);
  const stop = new AbortController();
  const onSignal = () => stop.abort();
  Deno.addSignalListener("SIGTERM", onSignal);
  Deno.addSignalListener("SIGINT", onSignal);
  try {
    const c = await startCoordinator(cfg, stop.signal);
    console.log(JSON.stringify(c.ready));
    await c.done;
  } finally {
    Deno.removeSignalListener("SIGTERM", onSignal);
    Deno.removeSignalListener("SIGINT", onSignal);
  }
  return EXIT.OK;
}

/** What a coordinator says once it has its identity and store. */
export interface CoordReady {
  /** Always true. */
  ready: true;
  /** Its id in the election. */
  id: string;
  /** Its store (`sqlite:PATH` or the etcd endpoints). */
  store: string;
}

/** A coordinator started in this process. */
export interface RunningCoordinator {
  /** What it said once its identity and store were open. */
  ready: CoordReady;
  /** Settles once it has stopped (its signal aborted) or failed. */
  done: Promise<void>;
}

/**
 * Starts the coordinator of `cfg` in this process (`dcres coord`, or beside the agent with
 * `dcres agent --coordinator`) until `signal` aborts; resolves once its identity and store are
 * open, or rejects with why they are not.
 */
export function startCoordinator(
  cfg: CoordConfig,
  signal: AbortSignal,
): Promise<RunningCoordinator> {
  const ready = Promise.withResolvers<CoordReady>();
  const done = runCoordinator(cfg, signal, ready.resolve);
  done.catch(ready.reject);
  return ready.promise.then((r) => ({ ready: r, done }));
}

async function runCoordinator(
  cfg: CoordConfig,
  signal: AbortSignal,
  onReady: (r: CoordReady) => void,
): Promise<void> {
  const identity = await coordinatorIdentity(cfg.identityDir);
  if (!cfg.store.startsWith("etcd://")) {
    Deno.mkdirSync(dirname(cfg.store), { recursive: true, mode: 0o700 });
  }
  const state = await openState(cfg.store);
  const coord = new Coordinator(cfg, state, (addr) => RpcClient.connect(addr, identity));
  const metrics = cfg.metricsPort
    ? Deno.serve(
      { hostname: "127.0.0.1", port: cfg.metricsPort, onListen: () => {} },
      async (req) =>
        new URL(req.url).pathname === "/metrics"
          ? new Response(await coordMetricsText(state, coord.counters, state.isLeader()), {
            headers: { "content-type": "text/plain; version=0.0.4" },
          })
          : new Response("not found\n", { status: 404 }),
    )
    : undefined;
  onReady({ ready: true, id: cfg.id, store: state.where });
  try {
    await coord.run(signal);
  } finally {
    await metrics?.shutdown();
    await state.close();
  }
  getLogger(["dcres", "coord"]).info("coordinator {id} stopped", { id: cfg.id });
}

/** The identity in `dir`, which must be whole and of role `coordinator`. */
async function coordinatorIdentity(dir: string): Promise<Identity> {
  let identity: Identity;
  try {
    identity = await checkIdentity(dir);
  } catch (e) {
    throw new ConfigError(`identityDir ${dir}: ${(e as Error).message}`);
  }
  const me = await verifyPeerCertificate(identity.certPem, identity.caPem);
  if (!me.ok || me.role !== "coordinator") {
    throw new ConfigError(
      `identityDir ${dir}: the certificate's role is ${
        me.ok ? me.role ?? "none" : "unreadable"
      }, not coordinator; issue one with 'dcres ca issue --role coordinator'`,
    );
  }
  return identity;
}

/** The store of `config`; with `create`, a SQLite file is made if absent, else it must exist. */
export async function openConfiguredState(config: string, create = false): Promise<CoordState> {
  const cfg = loadCoordConfig(config);
  if (create && !cfg.store.startsWith("etcd://")) {
    Deno.mkdirSync(dirname(cfg.store), { recursive: true, mode: 0o700 });
  } else if (!cfg.store.startsWith("etcd://") && !existsSync(cfg.store)) {
    throw new ConfigError(
      `store ${cfg.store}: no coordinator state there yet; start 'dcres coord --config ${config}' first`,
    );
  }
  return await openState(cfg.store);
}

/** Prints the cluster's hosts, leases, VMs and recent events from the coordinator's store. */
export async function coordStatusCommand(
  g: GlobalOptions,
  f: Required<CoordFlags>,
): Promise<number> {
  const cfg = loadCoordConfig(f.config);
  const state = await openConfiguredState(f.config);
  try {
    const now = Date.now();
    const s = await coordStatus(cfg, state, now);
    report(g, s, () => formatCoordStatus(s, now).join("\n"));
  } finally {
    await state.close();
  }
  return EXIT.OK;
}
