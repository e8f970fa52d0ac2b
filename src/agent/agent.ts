/**
 * The per-host agent: one QUIC endpoint (mutually authenticated RPC) for the cluster, the same RPC on
 * a unix socket for the local CLI, VMs as their own `dcres vmm` processes in its data directory
 * (so a restarted agent finds them again), and the host's checkpoint store.
 */
import { join, resolve } from "node:path";
import { getLogger } from "@logtape/logtape";
import { DCRES_VERSION } from "../ckpt/format.ts";
import { DEFAULT_CHECKPOINT_MODE } from "../ckpt/manifest.ts";
import { DEFAULT_MAX_DOWNTIME_MS } from "../ckpt/transaction.ts";
import { inspectCheckpoint, listGenerations, summarizeCheckpoint } from "../ckpt/inspect.ts";
import { type Identity, loadIdentity, verifyPeerCertificate } from "../net/identity.ts";
import { formatHostPort, type HostPort, isHostPort, parseHostPort } from "../net/address.ts";
import { RpcClient, RpcServer } from "../net/quic.ts";
import { Revocations } from "../net/revocation.ts";
import type { RpcHandler } from "../rpc/dispatcher.ts";
import { ConfigError, RpcError } from "../rpc/errors.ts";
import { listVms, request, surveyVms } from "../vmm/control/client.ts";
import type { MachineSpec } from "../vmm/machine.ts";
import { relayConsole } from "./console.ts";
import { pageHandlers } from "./pages.ts";
import { PageLoads } from "./page_loads.ts";
import { heldAsData } from "./page_held.ts";
import { ckptFileHandlers } from "./ckpt_files.ts";
import { PageStores } from "../paging/page_store.ts";
import type { SplitSpec } from "../paging/remote_pager.ts";
import { hostAvailableMemory } from "../memory/guest_memory.ts";
import { spawnRestore, spawnVmm } from "./spawn.ts";
import { LocalRpcServer } from "./local.ts";
import { type AccelChoice, AccelUnavailableError, parseAccelChoice } from "../accel/accel.ts";
import { accelChoice } from "../accel/select.ts";
import { AGENT_ACCESS, AGENT_CHANNELS } from "./access.ts";
import { validated } from "./schemas.ts";
import { checkpointPath, guestFile, nameArg, storeArg } from "./paths.ts";
import { metricsText, storeUsage } from "./metrics.ts";
import type { CallerRole } from "../rpc/roles.ts";
import { PAGE_SIZE } from "../accel/accel.ts";
import { verifyOffLoop } from "./verify.ts";
import { checkQuota } from "./upload_space.ts";
import { ScrubCounters, scrubHandlers } from "./scrub.ts";
import { mergesFromMain, PageOwners } from "./page_owners.ts";
import { answeringPeers, selfDescription } from "./peers.ts";
import { AgentLease } from "./lease_handler.ts";
import { SelfRepair, withSelfRepair } from "./self_repair.ts";
import { BackgroundScrub, DEFAULT_SCRUB_EVERY_MS } from "./scrub_loop.ts";

/** The checkpoint-file methods a split VM's main host calls to merge and prune its chain on a sub-host. */
const MERGE_METHODS = ["ckpt.merge.part", "ckpt.commit", "ckpt.abort", "ckpt.prune"] as const;

/** Agent settings (flags or a JSON config file). */
export interface AgentConfig {
  /** QUIC listen address, HOST:PORT. */
  listen: string;
  /** Data directory: VM sockets and logs in run/, checkpoints in ckpt/. */
  dataDir: string;
  /** Directory with host.crt, host.key and ca.crt. */
  identityDir: string;
  /** Serve Prometheus metrics on 127.0.0.1:PORT (off when absent). */
  metricsPort?: number;
  /** Bytes of split VMs' pages this host may hold as a sub-host (default: half its free memory). */
  pageStoreBytes?: number;
  /** The accelerator of the VMs it starts when a request names none (default: `accelChoice()`). */
  accel?: AccelChoice;
  /**
   * Bytes of checkpoint files the store may hold: checked before a checkpoint, a copy or an upload
   * writes (default: only the disk's free space).
   */
  storeQuotaBytes?: number;
  /** Generations a checkpoint store keeps when a checkpoint names no `--keep` (default: all). */
  checkpointKeep?: number;
  /** Milliseconds between re-reads of ca.crl and re-checks of connected peers (default 60 s). */
  recheckMs?: number;
  /** The only directory kernels and initrds of Linux guests it starts are read from. */
  guestDir?: string;
  /** The cluster's other agents (HOST:PORT): where its one-host VMs' checkpoint copies may go. */
  peers?: string[];
  /** Its zone label: copies go to other zones first. */
  zone?: string;
  /** Copies of every checkpoint fragment unless a request says (default: 2 with other hosts). */
  replicas?: number;
  /** Bytes per second the background scrub reads stored copies at (absent or 0: no background scrub). */
  scrubRateBytes?: number;
  /** Milliseconds between the starts of two background scrub passes (default a day). */
  scrubEveryMs?: number;
}

/** True when other agents can dial `listen`: its host is an address, not a wildcard. */
function dialable(listen: string): boolean {
  try {
    const { hostname } = parseHostPort(listen);
    return hostname !== "0.0.0.0" && hostname !== "::";
  } catch {
    return false;
  }
}

/** The guest directory of an agent without one configured. */
export const DEFAULT_GUEST_DIR = "/var/lib/dcres/guests";

const log = getLogger(["dcres", "agent"]);

/** How long a stopping agent reads pages of lazy loads in before it leaves them to the records. */
const STOP_FILL_MS = 20_000;

/** How long `status` waits for each VMM before naming it unanswered. */
const STATUS_VMS_WITHIN_MS = 2000;

/** The accelerator a request asks for (its `accel`), else the agent's default. */
function accelArg(cfg: AgentConfig, args: Record<string, unknown>): AccelChoice {
  if (args.accel === undefined) return cfg.accel ?? accelChoice();
  try {
    return parseAccelChoice(String(args.accel), "accel");
  } catch (e) {
    if (e instanceof AccelUnavailableError) throw new RpcError("bad-request", e.message);
    throw e;
  }
}

function str(args: Record<string, unknown>, k: string): string {
  const v = args[k];
  if (typeof v !== "string" || v === "") {
    throw new RpcError("bad-request", `argument "${k}" must be a non-empty string`);
  }
  return v;
}

/** A running agent. */
export class Agent {
  private readonly started = performance.now();

  private constructor(
    /** Its settings. */
    readonly config: AgentConfig,
    private readonly quic: RpcServer,
    private readonly local: LocalRpcServer,
    /** The host name in its certificate. */
    readonly host: string,
  ) {}

  /** Directory of VM control sockets. */
  static stateDir(cfg: AgentConfig): string {
    return join(cfg.dataDir, "run");
  }

  /** Path of the local unix socket. */
  static socketPath(cfg: AgentConfig): string {
    return join(cfg.dataDir, "agent.sock");
  }

  /** Loads the identity, prepares the data directory and starts serving. */
  static async start(cfg: AgentConfig): Promise<Agent> {
    const identity: Identity = loadIdentity(cfg.identityDir);
    const me = await verifyPeerCertificate(identity.certPem, identity.caPem);
    if (!me.ok) {
      throw new ConfigError(
        `${cfg.identityDir}: ${me.reason}; give this agent an identity the cluster CA signed ('dcres ca issue')`,
      );
    }
    Deno.mkdirSync(join(cfg.dataDir, "run"), { recursive: true, mode: 0o700 });
    Deno.mkdirSync(join(cfg.dataDir, "ckpt"), { recursive: true, mode: 0o700 });
    let listen: HostPort;
    try {
      listen = parseHostPort(cfg.listen, { anyPort: true });
    } catch (e) {
      throw new ConfigError(`--listen ${(e as Error).message}, e.g. 127.0.0.2:7400`);
    }
    const t0 = performance.now();
    const stores = new PageStores(
      join(cfg.dataDir, "pages"),
      Math.floor((cfg.pageStoreBytes ?? hostAvailableMemory() / 2) / PAGE_SIZE),
      me.host,
    );
    const owners = new PageOwners(stores.dir);
    // This agent's own calls to others (pushes, copies of fragments) authenticate as itself.
    const connect = (addr: string) => RpcClient.connect(addr, identity);
    const root = join(cfg.dataDir, "ckpt");
    const generation = (arg: unknown, role: CallerRole, field?: string) =>
      checkpointPath(root, arg, "generation", role, field);
    const repair = new SelfRepair(root, me.host, connect, scrubs);
    const loads = new PageLoads(stores, root, generation, (dir) => repair.heal(dir));
    // Before anyone is served: main's first request for such a page finds its source open.
    for (const f of loads.resumeUnfinished()) {
      log.error("{vm}: the lazy load a stopped agent left cannot go on: {error}", f);
    }
    // A restore or verify that met a damaged copy here is tried again once it is replaced.
    const handlers = validated(withSelfRepair(
      {
        ...new AgentLease(Agent.stateDir(cfg)).handlers(),
        ...mergesFromMain(owners, agentHandlers(cfg, me.host, t0, connect), MERGE_METHODS),
        ...heldAsData(
          pageHandlers(stores, root, generation, {
            owners,
            connect,
            quotaBytes: cfg.storeQuotaBytes,
            loads,
          }),
        ),
      },
      repair,
      root,
      connect,
      generation,
    ));
    const warn = (msg: string, p: Record<string, unknown>) => log.warn(msg, p);
    const revocations = await Revocations.load(cfg.identityDir, identity.caPem, warn);
    const quic = new RpcServer(identity, handlers, listen, warn, AGENT_ACCESS, {
      revocations,
      channels: AGENT_CHANNELS,
      ...(cfg.recheckMs ? { limits: { recheckMs: cfg.recheckMs } } : {}),
    });
    quic.start();
    handlers.status = async () => {
      // Bounded: an operator's `dcres status` answers while a VMM hangs, and names it.
      const survey = await surveyVms(Agent.stateDir(cfg), STATUS_VMS_WITHIN_MS);
      return {
        host: me.host,
        version: DCRES_VERSION,
        accel: cfg.accel ?? accelChoice(),
        addr: formatHostPort(quic.addr),
        uptimeMs: Math.round(performance.now() - t0),
        vms: survey.vms,
        ...(survey.unanswered.length ? { unanswered: survey.unanswered } : {}),
        checkpoints: storeUsage(cfg.dataDir),
        pageStores: { capacityPages: stores.capacityPages, vms: stores.list() },
        refusedConnections: quic.refused,
        peers: quic.peers(),
        scrub: scrubs.toJSON(),
      };
    };
    const local = new LocalRpcServer(Agent.socketPath(cfg), handlers);
    const agent = new Agent(cfg, quic, local, me.host);
    agent.pageStores = stores;
    if (cfg.scrubRateBytes) {
      const every = cfg.scrubEveryMs ?? DEFAULT_SCRUB_EVERY_MS;
      agent.scrub = new BackgroundScrub(root, cfg.scrubRateBytes, every, repair, scrubs);
    }
    if (cfg.metricsPort) {
      agent.metrics = Deno.serve(
        { hostname: "127.0.0.1", port: cfg.metricsPort, onListen: () => {} },
        async (req) =>
          new URL(req.url).pathname === "/metrics"
            ? new Response(
              await metricsText({
                stateDir: Agent.stateDir(cfg),
                dataDir: cfg.dataDir,
                refused: quic.refused,
                t0,
                scrubs,
              }),
              {
                headers: { "content-type": "text/plain; version=0.0.4" },
              },
            )
            : new Response("not found\n", { status: 404 }),
      );
    }
    log.info("agent {host} listening on {addr}, data in {dir}", {
      host: me.host,
      addr: formatHostPort(quic.addr),
      dir: cfg.dataDir,
    });
    return agent;
  }

  /** The bound QUIC address. */
  get addr(): string {
    return formatHostPort(this.quic.addr);
  }

  /** Milliseconds since start. */
  get uptimeMs(): number {
    return performance.now() - this.started;
  }

  /** The metrics HTTP server, when enabled. */
  metrics?: Deno.HttpServer;

  /** The background scrub, when enabled. */
  scrub?: BackgroundScrub;

  /** The split VMs' page stores this agent serves. */
  pageStores?: PageStores;

  /** Stops serving; the VMs keep running, and pages of lazy loads are read in first, for a while. */
  stop(): void {
    this.quic.close();
    this.local.close();
    // Bounded well inside systemd's stop timeout: what is left is picked up at the next start.
    const left = this.pageStores?.finishLoads(STOP_FILL_MS) ?? 0;
    if (left) {
      log.warn(
        "{left} pages of lazy restores are still in their checkpoints; the next start " +
          "picks their loads up again",
        { left },
      );
    }
    void this.metrics?.shutdown();
    void this.scrub?.stop();
  }
}

/** The RPC methods of an agent. */
export function agentHandlers(
  cfg: AgentConfig,
  host: string,
  t0: number,
  connect: (addr: string) => Promise<RpcClient>,
): Record<string, RpcHandler> {
  const stateDir = Agent.stateDir(cfg);
  const root = join(cfg.dataDir, "ckpt");
  const inData = (p: unknown, role: CallerRole) => checkpointPath(root, p, "generation", role);
  const vmName = (args: Record<string, unknown>) => nameArg(args, "name", "vm");
  const vm = (op: "stop" | "pause" | "resume") => async (args: Record<string, unknown>) => ({
    name: vmName(args),
    op,
    ...(await request<Record<string, unknown> | null>(stateDir, vmName(args), { op }) ?? {}),
  });
  return {
    health: async () => ({
      ok: true,
      version: DCRES_VERSION,
      host,
      uptimeMs: Math.round(performance.now() - t0),
      vms: (await listVms(stateDir)).length,
      ...selfDescription(cfg.zone, root),
    }),
    "vm.ls": () => listVms(stateDir),
    "vm.start": async (args) => {
      const spec = specArg(cfg, args.spec);
      return await spawnVmm(
        spec,
        stateDir,
        typeof args.forMs === "number" ? args.forMs : undefined,
        [
          "--accel",
          accelArg(cfg, args),
          ...(args.split === undefined ? [] : [
            "--split",
            JSON.stringify({ ...splitArg(args.split), identityDir: resolve(cfg.identityDir) }),
          ]),
        ],
      );
    },
    "vm.stop": vm("stop"),
    "vm.pause": vm("pause"),
    "vm.resume": vm("resume"),
    "guest.verify": (args, ctx) =>
      request(
        stateDir,
        vmName(args),
        {
          op: "verify",
          timeoutMs: args.timeoutMs as number | undefined,
        },
        undefined,
        ctx.signal,
      ),
    "vm.check": (args) => request(stateDir, vmName(args), { op: "paging.check" }),
    "vm.split": (args) =>
      request(stateDir, vmName(args), {
        op: "split",
        ...splitArg(args.split),
        identityDir: resolve(cfg.identityDir),
      }),
    "vm.gather": (args) => request(stateDir, vmName(args), { op: "gather" }),
    "vm.movesub": (args) =>
      request(stateDir, vmName(args), {
        op: "move-sub",
        from: str(args, "from"),
        to: str(args, "to"),
      }),
    "vm.exec": (args, ctx) =>
      request(
        stateDir,
        vmName(args),
        {
          op: "exec",
          cmd: str(args, "cmd"),
          timeoutMs: typeof args.timeoutMs === "number" ? args.timeoutMs : 30_000,
        },
        undefined,
        ctx.signal,
      ),
    "vm.console": (args, ctx) => relayConsole(stateDir, vmName(args), ctx),
    checkpoint: async (args, ctx) => {
      const name = vmName(args);
      const dir = storeArg(root, args.dir ?? name, ctx.role);
      const replicas = args.replicas ?? cfg.replicas;
      // Admission, before anything is written: a full checkpoint of main's memory must fit.
      const mem = (await listVms(stateDir)).find((v) => v.name === name)?.memSize ?? 0;
      checkQuota(root, cfg.storeQuotaBytes, `checkpoint of ${name} on ${host}`, mem);
      const keep = args.keep ?? cfg.checkpointKeep;
      return await request(stateDir, name, {
        op: "checkpoint",
        dir,
        mode: args.mode ?? DEFAULT_CHECKPOINT_MODE,
        incremental: !!args.incremental,
        compress: !!args.compress,
        maxDowntimeMs: args.maxDowntimeMs ?? DEFAULT_MAX_DOWNTIME_MS,
        traditional: !!args.traditional,
        host,
        ...(replicas === undefined ? {} : { replicas }),
        ...(keep === undefined ? {} : { keep }),
        ...(dialable(cfg.listen) ? { self: cfg.listen } : {}),
        ...(cfg.peers
          ? {
            peers: replicas === 1 ? [] : await answeringPeers(cfg.peers, host, connect),
            identityDir: resolve(cfg.identityDir),
          }
          : {}),
        ...(cfg.zone === undefined ? {} : { zone: cfg.zone }),
      }, ctx.progress);
    },
    restore: (args, ctx) =>
      spawnRestore(inData(args.path, ctx.role), stateDir, {
        name: args.name === undefined ? undefined : vmName(args),
        lazy: !!args.lazy,
        accel: accelArg(cfg, args),
        split: args.split === undefined ? undefined : JSON.stringify({
          ...splitArg(args.split),
          holders: holdersArg(args.split),
          identityDir: resolve(cfg.identityDir),
        }),
      }),
    ...ckptFileHandlers(root, inData, connect, cfg.storeQuotaBytes, host, () => scrubs.repaired++),
    ...scrubHandlers(root, scrubs),
    "ckpt.ls": (args, ctx) =>
      Promise.resolve(listGenerations(checkpointPath(root, args.path, "store", ctx.role))),
    "ckpt.inspect": (args, ctx) =>
      Promise.resolve(summarizeCheckpoint(inspectCheckpoint(inData(args.path, ctx.role)))),
    "ckpt.verify": async (args, ctx) => ({
      ok: true,
      ...await verifyOffLoop(inData(args.path, ctx.role), true, ctx.signal),
    }),
  };
}

/**
 * The machine spec of vm.start: its name of the VM grammar (it names the VM's socket and log), and
 * a Linux guest's kernel and initrd from the agent's guest directory only.
 */
function specArg(cfg: AgentConfig, v: unknown): MachineSpec {
  if (typeof v !== "object" || v === null) {
    throw new RpcError("bad-request", "vm.start needs a machine spec");
  }
  const spec = { ...v } as MachineSpec;
  nameArg(spec as unknown as Record<string, unknown>, "name", "vm");
  if (spec.linux !== undefined) {
    const dir = cfg.guestDir ?? DEFAULT_GUEST_DIR;
    const l = spec.linux;
    spec.linux = {
      ...l,
      kernel: guestFile(dir, "kernel", l?.kernel),
      ...(l?.initrd === undefined ? {} : { initrd: guestFile(dir, "initrd", l.initrd) }),
    };
  }
  return spec;
}

/** Validates the `split` argument of vm.start. */
function splitArg(v: unknown): SplitSpec {
  const s = v as Partial<SplitSpec> | null;
  if (
    typeof s !== "object" || s === null || !Number.isSafeInteger(s.mainMemBytes) ||
    !Array.isArray(s.subs) || s.subs.length === 0 ||
    !s.subs.every((a) => typeof a === "string" && isHostPort(a))
  ) {
    throw new RpcError("bad-request", "split needs mainMemBytes and subs (HOST:PORT addresses)");
  }
  return { mainMemBytes: s.mainMemBytes!, subs: s.subs };
}

/** Validates the `holders` of a split restore: for each fragment, 0 (main) or a sub-host's 1..n. */
function holdersArg(v: unknown): number[] {
  const s = v as { holders?: unknown; subs: unknown[] };
  const h = s.holders;
  if (
    !Array.isArray(h) || !h.every((x) => Number.isSafeInteger(x) && x >= 0 && x <= s.subs.length)
  ) {
    throw new RpcError(
      "bad-request",
      "holders must give each fragment's host: 0 (main) or 1..subs",
    );
  }
  return h as number[];
}

/** This agent's scrub counters (one agent per process). */
const scrubs = new ScrubCounters();
