/**
 * The agent's membership (issue 15): the cluster's other agents it is told of (`--peers`, `peers`
 * in its config), its zone label (`--zone`), and its policy's number of checkpoint copies
 * (`--replicas`). Before a checkpoint it asks every peer who it is, its zone and its free store
 * space (`health`); those that answer are where a one-host VM's copies may go.
 */
import { getLogger } from "@logtape/logtape";
import type { PeerInfo } from "../ckpt/control.ts";
import { MAX_COPIES } from "../ckpt/manifest.ts";
import { checkName, isName } from "../codec/names.ts";
import { formatHostPort, parseHostPort } from "../net/address.ts";
import type { RpcClient } from "../net/quic.ts";
import { statvfs } from "../ffi/libc.ts";
import { ConfigError } from "../rpc/errors.ts";

const log = getLogger(["dcres", "agent"]);

/** How long a peer has to say who it is before a checkpoint passes it over. */
const PROBE_MS = 3000;

/** The most peers an agent may be given. */
export const MAX_PEERS = 256;

/** The agent's membership settings, checked. */
export interface Membership {
  /** The other agents' addresses. */
  peers?: string[];
  /** This agent's zone label. */
  zone?: string;
  /** Copies of every checkpoint fragment its VMs take unless a request says. */
  replicas?: number;
}

/**
 * `peers`, `zone` and `replicas` as given on the command line (`from` "--peers" etc.) or in the
 * config file, checked: each peer HOST:PORT, at most {@link MAX_PEERS}; the zone a label; replicas
 * a whole number from 1 to {@link MAX_COPIES}+1. Anything else is a one-line {@link ConfigError}.
 */
export function membershipOf(
  v: { peers?: unknown; zone?: unknown; replicas?: unknown },
  where: { peers: string; zone: string; replicas: string },
): Membership {
  const out: Membership = {};
  if (v.peers !== undefined) {
    const list = typeof v.peers === "string" ? v.peers.split(",").filter(Boolean) : v.peers;
    if (!Array.isArray(list) || list.length > MAX_PEERS) {
      throw new ConfigError(
        `${where.peers}: give the other agents as HOST:PORT,... (at most ${MAX_PEERS})`,
      );
    }
    out.peers = list.map((p) => {
      try {
        return formatHostPort(parseHostPort(String(p)));
      } catch (e) {
        throw new ConfigError(`${where.peers}: peer ${(e as Error).message}, e.g. 10.0.0.2:7400`);
      }
    });
  }
  if (v.zone !== undefined) {
    try {
      out.zone = checkName("zone", where.zone, v.zone);
    } catch (e) {
      throw new ConfigError((e as Error).message);
    }
  }
  if (v.replicas !== undefined) {
    const n = typeof v.replicas === "string" ? Number(v.replicas) : v.replicas;
    if (!Number.isSafeInteger(n) || (n as number) < 1 || (n as number) > MAX_COPIES + 1) {
      throw new ConfigError(
        `${where.replicas} ${JSON.stringify(v.replicas)}: give a whole number of copies from 1 to ${
          MAX_COPIES + 1
        }`,
      );
    }
    out.replicas = n as number;
  }
  return out;
}

/** What this agent says of itself in `health`: its zone and the free space of its store's disk. */
export function selfDescription(zone: string | undefined, storeRoot: string) {
  let freeBytes = 0;
  try {
    freeBytes = statvfs(storeRoot).availBytes;
  } catch {
    // A store disk that cannot be read has no room to offer.
  }
  return { ...(zone === undefined ? {} : { zone }), freeBytes };
}

/**
 * The peers among `addrs` that answer (this host, `self`, left out), each as its certificate names
 * it, with the zone and free space it reports (a zone that is not a label is ignored).
 */
export async function answeringPeers(
  addrs: string[],
  self: string,
  connect: (addr: string) => Promise<RpcClient>,
): Promise<PeerInfo[]> {
  const found = await Promise.all(addrs.map(async (addr): Promise<PeerInfo | undefined> => {
    let client: RpcClient | undefined;
    try {
      client = await connect(addr);
      const h = await client.call<{ zone?: unknown; freeBytes?: unknown }>("health", {}, {
        deadlineMs: PROBE_MS,
      });
      const free = h.freeBytes;
      return {
        host: client.host,
        addr,
        ...(isName("zone", h.zone) ? { zone: h.zone } : {}),
        freeBytes: Number.isSafeInteger(free) && (free as number) > 0 ? free as number : 0,
      };
    } catch (e) {
      log.warn("peer {addr} did not answer: {error}", { addr, error: (e as Error).message });
      return undefined;
    } finally {
      await client?.close();
    }
  }));
  return found.filter((p): p is PeerInfo => p !== undefined && p.host !== self);
}
