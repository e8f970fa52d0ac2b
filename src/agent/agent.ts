/**
 * The per-host agent: one QUIC endpoint (mutually authenticated RPC) for the cluster, the same RPC on
 * a unix socket for the local CLI, VMs as their own `dcres vmm` processes in its data directory
 * (so a restarted agent finds them again), and the host's checkpoint store.
 */
import { join, resolve } from "node:path";
import { getLogger } from "@logtape/logtape";
import { inspectCheckpoint, listGenerations, verifyCheckpoint } from "../ckpt/inspect.ts";
import { type Identity, loadIdentity, verifyPeerCertificate } from "../net/identity.ts";
import { type RpcHandler, RpcServer } from "../net/quic.ts";
import { RpcError } from "../net/rpc_messages.ts";
import { listVms, request } from "../vmm/control/client.ts";
import type { VmInfo } from "../vmm/control/protocol.ts";
import type { MachineSpec } from "../vmm/machine.ts";
import { spawnVmm } from "./spawn.ts";
import { LocalRpcServer } from "./local.ts";

/** dcres version the agent reports. */
export const AGENT_VERSION = "0.1.0";

/** Agent settings (flags or a JSON config file). */
export interface AgentConfig {
  /** QUIC listen address, HOST:PORT. */
  listen: string;
  /** Data directory: VM sockets and logs in run/, checkpoints in ckpt/. */
  dataDir: string;
  /** Directory with host.crt, host.key and ca.crt. */
  identityDir: string;
}

const log = getLogger(["dcres", "agent"]);

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
    if (!me.ok) throw new RpcError("unauthenticated", `${cfg.identityDir}: ${me.reason}`);
    Deno.mkdirSync(join(cfg.dataDir, "run"), { recursive: true, mode: 0o700 });
    Deno.mkdirSync(join(cfg.dataDir, "ckpt"), { recursive: true, mode: 0o700 });
    const m = /^(.+):(\d+)$/.exec(cfg.listen);
    if (!m) {
      throw new RpcError(
        "bad-request",
        `--listen ${cfg.listen}: use HOST:PORT, e.g. 127.0.0.2:7400`,
      );
    }
    const handlers = agentHandlers(cfg, me.host, performance.now());
    const quic = new RpcServer(
      identity,
      handlers,
      { hostname: m[1], port: Number(m[2]) },
      (msg, p) => log.warn(msg, p),
    );
    quic.start();
    const local = new LocalRpcServer(Agent.socketPath(cfg), handlers);
    const agent = new Agent(cfg, quic, local, me.host);
    log.info("agent {host} listening on {addr}, data in {dir}", {
      host: me.host,
      addr: `${quic.addr.hostname}:${quic.addr.port}`,
      dir: cfg.dataDir,
    });
    return agent;
  }

  /** The bound QUIC address. */
  get addr(): string {
    return `${this.quic.addr.hostname}:${this.quic.addr.port}`;
  }

  /** Milliseconds since start. */
  get uptimeMs(): number {
    return performance.now() - this.started;
  }

  /** Stops serving; the VMs keep running. */
  stop(): void {
    this.quic.close();
    this.local.close();
  }
}

/** The RPC methods of an agent. */
export function agentHandlers(
  cfg: AgentConfig,
  host: string,
  t0: number,
): Record<string, RpcHandler> {
  const stateDir = Agent.stateDir(cfg);
  const storeOf = (name: string) => join(cfg.dataDir, "ckpt", name);
  const inData = (p: string) => resolve(cfg.dataDir, "ckpt", p);
  const vm = (op: "stop" | "pause" | "resume") => async (args: Record<string, unknown>) => ({
    name: str(args, "name"),
    op,
    ...(await request<Record<string, unknown> | null>(stateDir, str(args, "name"), { op }) ?? {}),
  });
  return {
    health: async () => ({
      ok: true,
      version: AGENT_VERSION,
      host,
      uptimeMs: Math.round(performance.now() - t0),
      vms: (await listVms(stateDir)).length,
    }),
    "vm.ls": () => listVms(stateDir),
    "vm.start": async (args) => {
      const spec = args.spec as MachineSpec;
      if (typeof spec !== "object" || spec === null || typeof spec.name !== "string") {
        throw new RpcError("bad-request", "vm.start needs a machine spec");
      }
      return await spawnVmm(
        spec,
        stateDir,
        typeof args.forMs === "number" ? args.forMs : undefined,
      );
    },
    "vm.stop": vm("stop"),
    "vm.pause": vm("pause"),
    "vm.resume": vm("resume"),
    "guest.verify": (args) =>
      request(stateDir, str(args, "name"), {
        op: "verify",
        timeoutMs: args.timeoutMs as number | undefined,
      }),
    checkpoint: (args, ctx) => {
      const name = str(args, "name");
      const dir = typeof args.dir === "string" ? inData(args.dir) : storeOf(name);
      return request(stateDir, name, {
        op: "checkpoint",
        dir,
        mode: args.mode ?? "precopy",
        incremental: !!args.incremental,
        compress: !!args.compress,
        maxDowntimeMs: args.maxDowntimeMs ?? 50,
      }, ctx.progress);
    },
    restore: async (args) => {
      const path = inData(str(args, "path"));
      const { targetSpecOf } = await import("./restore_spec.ts");
      const spec = targetSpecOf(path, typeof args.name === "string" ? args.name : undefined);
      let info = await spawnVmm(spec, stateDir, undefined, [
        "--restore",
        path,
        ...(args.lazy ? ["--lazy"] : []),
      ]);
      const deadline = performance.now() + 120_000;
      while (info.restore?.residentMs === undefined && performance.now() < deadline) {
        await new Promise((r) => setTimeout(r, 50));
        info = await request<VmInfo>(stateDir, spec.name, { op: "info" });
      }
      return { name: spec.name, pid: info.pid, ...info.restore };
    },
    "ckpt.ls": (args) => Promise.resolve(listGenerations(inData(str(args, "path")))),
    "ckpt.inspect": (args) => {
      const i = inspectCheckpoint(inData(str(args, "path")));
      return Promise.resolve({
        dir: i.dir,
        chain: i.chain,
        ...i.manifest,
        machine: undefined,
        pageMap: undefined,
        prefetchOrder: undefined,
      });
    },
    "ckpt.verify": (args) =>
      Promise.resolve({ ok: true, ...verifyCheckpoint(inData(str(args, "path"))) }),
  };
}
