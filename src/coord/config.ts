/**
 * The coordinator's config file (`dcres coord --config FILE`, JSON): the agents it leases, its
 * identity, its store, and the timings of heartbeats, host states and leases. Checked whole before
 * anything starts; a bad field is one line naming it.
 */
import { join } from "node:path";
import * as v from "valibot";
import {
  checkLeaseTerms,
  DEFAULT_LEASE_TERMS,
  type LeaseTerms,
  LeaseTermsError,
} from "../agent/lease.ts";
import { CHECKPOINT_MODES } from "../ckpt/manifest.ts";
import { isName, shown } from "../codec/names.ts";
import { parseHostPort } from "../net/address.ts";
import { ConfigError } from "../rpc/errors.ts";
import { FENCE_CHECK_MS } from "../vmm_process/fence.ts";
import { makePolicy } from "./policy.ts";
import { MAX_LIST } from "./records.ts";
import type { Policy } from "./state.ts";

/** Most agents one coordinator watches. */
export const MAX_AGENTS = 1000;

const ms = (max: number) => v.pipe(v.number(), v.safeInteger(), v.minValue(1), v.maxValue(max));
const dir = v.pipe(v.string(), v.minLength(1), v.maxLength(4096));

const schema = v.strictObject({
  agents: v.pipe(
    v.array(v.strictObject({
      name: v.optional(v.pipe(v.string(), v.regex(/^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/))),
      addr: v.pipe(v.string(), v.maxLength(300)),
    })),
    v.minLength(1),
    v.maxLength(MAX_AGENTS),
  ),
  identityDir: v.optional(dir),
  dataDir: v.optional(dir),
  store: v.optional(v.pipe(v.string(), v.minLength(1), v.maxLength(4096))),
  id: v.optional(v.pipe(v.string(), v.regex(/^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/))),
  heartbeatMs: v.optional(ms(60_000)),
  suspectMs: v.optional(ms(3600_000)),
  downMs: v.optional(ms(3600_000)),
  leaderTtlMs: v.optional(ms(600_000)),
  eventsKeepMs: v.optional(v.pipe(ms(10 * 365 * 86_400_000), v.minValue(3600_000))),
  lease: v.optional(v.strictObject({
    ttlMs: v.optional(ms(3600_000)),
    drift: v.optional(v.number()),
    fenceMs: v.optional(v.pipe(v.number(), v.safeInteger(), v.minValue(0), v.maxValue(600_000))),
  })),
  metricsPort: v.optional(v.pipe(v.number(), v.safeInteger(), v.minValue(1), v.maxValue(65535))),
  // Each checked whole by the store's rules once its defaults are filled in (policy.ts).
  policies: v.optional(v.pipe(
    v.record(
      v.string(),
      v.strictObject({
        everyMs: v.number(),
        mode: v.optional(v.picklist(CHECKPOINT_MODES)),
        incremental: v.optional(v.boolean()),
        fullEvery: v.optional(v.number()),
        keep: v.optional(v.number()),
        replicas: v.optional(v.number()),
      }),
    ),
    v.check((r) => Object.keys(r).length <= MAX_LIST, `more than ${MAX_LIST} policies`),
  )),
});

/** A checked coordinator config, defaults filled in. */
export interface CoordConfig {
  /** The agents it leases: HOST:PORT and a name for messages (the address when none is given). */
  agents: { name: string; addr: string }[];
  /** host.crt, host.key and ca.crt of a `coordinator` certificate. */
  identityDir: string;
  /** Where the default SQLite store lives. */
  dataDir: string;
  /** A SQLite file path or `etcd://HOST:PORT,...`. */
  store: string;
  /** This coordinator's id in the election. */
  id: string;
  /** Ms between heartbeats. */
  heartbeatMs: number;
  /** Ms of silence before a host is suspect. */
  suspectMs: number;
  /** Ms of silence (and a lapsed lease) before a host is down. */
  downMs: number;
  /** Length of the leadership's lease in the store, ms. */
  leaderTtlMs: number;
  /** How long events are kept, ms; the leader prunes older ones. */
  eventsKeepMs: number;
  /** The lease terms sent to agents. */
  lease: LeaseTerms;
  /** Serve Prometheus metrics on 127.0.0.1:PORT (off when absent). */
  metricsPort?: number;
  /** Checkpoint policies to seed the store with, for VMs it has none for. */
  policies: Policy[];
}

/** The config in `text` (from `file`), checked; throws ConfigError with one line. */
export function parseCoordConfig(text: string, file: string): CoordConfig {
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (e) {
    throw new ConfigError(`${file}: not JSON (${(e as Error).message})`);
  }
  const r = v.safeParse(schema, raw);
  if (!r.success) {
    const issue = r.issues[0];
    throw new ConfigError(
      `${file}: ${v.getDotPath(issue) ?? "config"}: ${issue.message}; see docs/COORDINATOR.md`,
    );
  }
  const c = r.output;
  const seen = new Set<string>();
  const agents = c.agents.map((a, i) => {
    try {
      parseHostPort(a.addr);
    } catch (e) {
      throw new ConfigError(
        `${file}: agents.${i}.addr ${(e as Error).message}, e.g. 10.0.0.11:7400`,
      );
    }
    if (seen.has(a.addr)) {
      throw new ConfigError(`${file}: agents.${i}.addr ${a.addr} is listed twice`);
    }
    seen.add(a.addr);
    return { name: a.name ?? a.addr, addr: a.addr };
  });
  const dataDir = c.dataDir ?? "/var/lib/dcres-coord";
  const cfg: CoordConfig = {
    agents,
    identityDir: c.identityDir ?? "/etc/dcres/coord-identity",
    dataDir,
    store: c.store ?? join(dataDir, "coord.db"),
    id: c.id ?? `${Deno.hostname()}-${Deno.pid}`,
    heartbeatMs: c.heartbeatMs ?? 1000,
    suspectMs: c.suspectMs ?? 3000,
    downMs: c.downMs ?? 10_000,
    leaderTtlMs: c.leaderTtlMs ?? 5000,
    eventsKeepMs: c.eventsKeepMs ?? 7 * 86_400_000,
    lease: { ...DEFAULT_LEASE_TERMS, ...c.lease },
    ...(c.metricsPort === undefined ? {} : { metricsPort: c.metricsPort }),
    policies: Object.entries(c.policies ?? {}).map(([vm, p]) => {
      if (!isName("vm", vm)) throw new ConfigError(`${file}: policies.${shown(vm)}: not a VM name`);
      try {
        return makePolicy(vm, p);
      } catch (e) {
        throw new ConfigError(`${file}: policies.${vm}: ${(e as Error).message}`);
      }
    }),
  };
  try {
    checkLeaseTerms(cfg.lease);
  } catch (e) {
    if (e instanceof LeaseTermsError) throw new ConfigError(`${file}: ${e.message}`);
    throw e;
  }
  // The agent extends its lease one heartbeat after it began the renewal (lease_handler.ts), so
  // a lease shorter than a few heartbeats would lapse between them.
  if (cfg.lease.ttlMs < 3 * cfg.heartbeatMs) {
    throw new ConfigError(
      `${file}: lease.ttlMs ${cfg.lease.ttlMs} is under 3 heartbeats (heartbeatMs ${cfg.heartbeatMs}); raise it or beat faster`,
    );
  }
  if (cfg.lease.fenceMs < 2 * FENCE_CHECK_MS) {
    throw new ConfigError(
      `${file}: lease.fenceMs ${cfg.lease.fenceMs} is under ${
        2 * FENCE_CHECK_MS
      } ms, too short for a VMM to notice its lapse and pause`,
    );
  }
  if (cfg.downMs < cfg.suspectMs) {
    throw new ConfigError(`${file}: downMs ${cfg.downMs} is under suspectMs ${cfg.suspectMs}`);
  }
  return cfg;
}

/** Reads and checks the config file `file`. */
export function loadCoordConfig(file: string): CoordConfig {
  let text: string;
  try {
    text = Deno.readTextFileSync(file);
  } catch (e) {
    throw new ConfigError(`--config ${file}: ${(e as Error).message}`);
  }
  return parseCoordConfig(text, file);
}
