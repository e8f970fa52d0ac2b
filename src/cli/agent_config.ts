/**
 * `dcres agent`'s settings: its config file (`--config FILE`, JSON) checked whole before anything
 * starts, and its flags over it. Each key has one rule, and the flag that sets the same thing is
 * held to the same rule, so the file accepts what the flag accepts and nothing else. A bad value or
 * an unknown key is one {@link UsageError} line naming the file, the key and what to give instead.
 */
import { isAbsolute } from "node:path";
import { ACCEL_KINDS, AccelUnavailableError, parseAccelChoice } from "../accel/accel.ts";
import { type AgentConfig, DEFAULT_GUEST_DIR } from "../agent/agent.ts";
import { type Membership, membershipOf } from "../agent/peers.ts";
import { keepArg } from "../ckpt/retention.ts";
import { shown } from "../codec/names.ts";
import { parseHostPort } from "../net/address.ts";
import { accelFlag } from "./accel_flag.ts";
import { parseDuration, parseSize, UsageError } from "./units.ts";

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

/** The agent's config file, checked: the settings it gives, and a coordinator to run beside it. */
export type AgentFile = Partial<AgentConfig> & { coordinator?: string };

/** A key's rule: `v` checked (and normalized), or a UsageError saying `where` must be what. */
type Rule<T> = (v: unknown, where: string) => T;

/** How a bad value is shown after "got": strings quoted and cut short, other JSON by its kind. */
function got(v: unknown): string {
  if (typeof v === "string") return shown(v);
  if (Array.isArray(v)) return "a list";
  return v !== null && typeof v === "object" ? "an object" : String(v);
}

function refuse(where: string, what: string, v: unknown): never {
  throw new UsageError(`${where} must be ${what} (got ${got(v)})`);
}

/** A whole number from `min` to `max` (`what` says so in words). */
const whole = (min: number, max: number, what: string): Rule<number> => (v, where) =>
  Number.isSafeInteger(v) && (v as number) >= min && (v as number) <= max
    ? v as number
    : refuse(where, what, v);

/** The longest delay `setTimeout`/`setInterval` keep: a longer one fires at once (WHATWG timers). */
const MAX_TIMER_MS = 2 ** 31 - 1;

const PORT = whole(1, 65535, "a port number from 1 to 65535");
const BYTES = whole(1, Number.MAX_SAFE_INTEGER, "a whole number of bytes, at least 1");
// At least 1 s: each re-check stats the CRL and walks every connection, and a CRL is copied in by
// hand, so checking more often costs without use. At most 1 h: a revoked peer's connections (page
// channels live for days) close only at the next re-check, so a longer wait defeats it.
const RECHECK_MS = whole(1000, 3_600_000, "a whole number of milliseconds from 1000 to 3600000");
// At least 1 s: a pass over an empty store ends at once, so passes closer together would spin. At
// most the longest timer: the wait between passes is one setTimeout, and a longer one fires at once.
const SCRUB_EVERY_MS = whole(
  1000,
  MAX_TIMER_MS,
  `a whole number of milliseconds from 1000 to ${MAX_TIMER_MS}, about 24.8 days`,
);
const SCRUB_RATE = whole(
  0,
  Number.MAX_SAFE_INTEGER,
  "a whole number of bytes per second (0: no background scrub)",
);

/** PATH_MAX: no longer path opens. */
const MAX_PATH = 4096;

/**
 * A directory, as `example` is: an absolute path, since the agent runs from systemd's working
 * directory `/` and a relative one, in its file or on its command line, would not mean what its
 * writer meant once the agent is a service.
 */
const dir = (example: string): Rule<string> => (v, where) =>
  typeof v === "string" && isAbsolute(v) && v.length <= MAX_PATH && !v.includes("\0")
    ? v
    : refuse(where, `an absolute path, e.g. ${example}`, v);

/** The agent's data directory when none is given. */
const DEFAULT_DATA_DIR = "/var/lib/dcres";
/** The agent's identity directory when none is given. */
const DEFAULT_IDENTITY_DIR = "/etc/dcres/identity";
const DATA_DIR = dir(DEFAULT_DATA_DIR);
const IDENTITY_DIR = dir(DEFAULT_IDENTITY_DIR);
const GUEST_DIR = dir(DEFAULT_GUEST_DIR);

/** The address the agent listens on: HOST:PORT, port 0 too (any free port), as `--listen` takes. */
const LISTEN: Rule<string> = (v, where) => {
  const what = "an address HOST:PORT to listen on, e.g. 10.0.0.11:7400";
  if (typeof v !== "string") return refuse(where, what, v);
  try {
    parseHostPort(v, { anyPort: true });
  } catch (e) {
    throw new UsageError(`${where} must be ${what} (${(e as Error).message})`);
  }
  return v;
};

/** `auto` or an accelerator kind (accel/accel.ts has the one list). */
const ACCEL: Rule<AgentConfig["accel"]> = (v, where) => {
  if (typeof v !== "string") return refuse(where, `one of auto, ${ACCEL_KINDS.join(", ")}`, v);
  try {
    return parseAccelChoice(v, where);
  } catch (e) {
    if (e instanceof AccelUnavailableError) throw new UsageError(e.message);
    throw e;
  }
};

/** A coordinator's config file, by the file's `coordinator` or `--coordinator`. */
export const coordinatorPath: Rule<string> = (v, where) =>
  typeof v === "string" && v
    ? v
    : refuse(where, "the path of a coordinator's config file, e.g. /etc/dcres/coord.json", v);

/** `checkpointKeep`: ckpt/retention.ts's rule, as `checkpoint --keep` has it. */
const KEEP: Rule<number | undefined> = (v, where) => {
  try {
    return keepArg(v, where);
  } catch (e) {
    throw new UsageError((e as Error).message);
  }
};

/** `peers`, `zone`, `replicas` of the file or the flags (`at` names each), by agent/peers.ts. */
function membership(
  v: { peers?: unknown; zone?: unknown; replicas?: unknown },
  at: (key: string) => string,
): Membership {
  try {
    return membershipOf(v, { peers: at("peers"), zone: at("zone"), replicas: at("replicas") });
  } catch (e) {
    throw new UsageError((e as Error).message);
  }
}

/** Every key the file may have and its rule; the membership keys go through `membership`. */
const RULES: Record<keyof AgentFile, Rule<unknown> | "membership"> = {
  listen: LISTEN,
  dataDir: DATA_DIR,
  identityDir: IDENTITY_DIR,
  guestDir: GUEST_DIR,
  metricsPort: PORT,
  pageStoreBytes: BYTES,
  storeQuotaBytes: BYTES,
  accel: ACCEL,
  recheckMs: RECHECK_MS,
  checkpointKeep: KEEP,
  scrubRateBytes: SCRUB_RATE,
  scrubEveryMs: SCRUB_EVERY_MS,
  peers: "membership",
  zone: "membership",
  replicas: "membership",
  coordinator: coordinatorPath,
};

/** The keys an agent's config file may have. */
export const AGENT_FILE_KEYS: readonly string[] = Object.keys(RULES);

/** A key as a message shows it: bare when it looks like one, else quoted. */
const keyShown = (k: string) => /^[A-Za-z][A-Za-z0-9_]{0,63}$/.test(k) ? k : shown(k);

/** The agent's config `text`, read from `file`, checked whole; throws a one-line UsageError. */
export function parseAgentFile(text: string, file: string): AgentFile {
  const at = `--config ${file}`;
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (e) {
    // V8 quotes the text near the error, newlines and all.
    throw new UsageError(`${at}: not JSON (${(e as Error).message.replace(/\s+/g, " ")})`);
  }
  if (raw === null || typeof raw !== "object" || Array.isArray(raw)) {
    refuse(at, `a JSON object of settings, e.g. {"listen": "10.0.0.11:7400"}`, raw);
  }
  const given = raw as Record<string, unknown>;
  const out: Record<string, unknown> = {};
  for (const [key, v] of Object.entries(given)) {
    const rule = Object.hasOwn(RULES, key) ? RULES[key as keyof AgentFile] : undefined;
    if (rule === undefined) {
      throw new UsageError(
        `${at}: unknown key ${keyShown(key)}; known: ${AGENT_FILE_KEYS.join(", ")}`,
      );
    }
    if (rule !== "membership") out[key] = rule(v, `${at}: ${key}`);
  }
  return {
    ...out as AgentFile,
    ...membership(
      { peers: given.peers, zone: given.zone, replicas: given.replicas },
      (k) => `${at}: ${k}`,
    ),
  };
}

/** Reads and checks the agent's config file `file`. */
export function loadAgentFile(file: string): AgentFile {
  let text: string;
  try {
    text = Deno.readTextFileSync(file);
  } catch (e) {
    throw new UsageError(`--config ${file}: ${(e as Error).message}`);
  }
  return parseAgentFile(text, file);
}

/** `--scrub-rate`: SIZE or SIZE/s in bytes per second, or `off` (0). */
function scrubRate(text: string): number {
  return text === "off" ? 0 : parseSize("--scrub-rate", text.replace(/\/s$/, ""));
}

/** A port flag's text: its number when it is all digits (anything else the port rule refuses). */
const PORT_TEXT: Rule<number> = (v, where) =>
  PORT(typeof v === "string" && /^\d+$/.test(v) ? Number(v) : v, where);

const asIs = (text: string): unknown => text;

/**
 * Flag `name`'s `text` parsed by `parse`, then held to `rule` (a message names the text when it
 * was parsed, since the value it shows is then not what was typed); undefined when not given.
 */
function flag<T>(
  name: string,
  text: string | undefined,
  rule: Rule<T>,
  parse: (text: string) => unknown = asIs,
): T | undefined {
  if (text === undefined) return undefined;
  return rule(parse(text), parse === asIs ? name : `${name} ${text}`);
}

/**
 * The agent's settings: each flag given, else the checked `file`'s value, else the default. A flag
 * is held to its key's rule, so neither way in takes what the other refuses.
 */
export function agentConfigOf(f: AgentFlags, file: AgentFile): AgentConfig {
  const m = membership({ peers: f.peers, zone: f.zone, replicas: f.replicas }, (k) => `--${k}`);
  return {
    listen: flag("--listen", f.listen, LISTEN) ?? file.listen ?? "127.0.0.1:7400",
    dataDir: flag("--data-dir", f.dataDir, DATA_DIR) ?? file.dataDir ?? DEFAULT_DATA_DIR,
    identityDir: flag("--identity", f.identity, IDENTITY_DIR) ?? file.identityDir ??
      DEFAULT_IDENTITY_DIR,
    metricsPort: flag("--metrics-port", f.metricsPort, PORT_TEXT) ?? file.metricsPort,
    pageStoreBytes: flag("--page-store", f.pageStore, BYTES, (t) => parseSize("--page-store", t)) ??
      file.pageStoreBytes,
    accel: accelFlag(f.accel ?? file.accel),
    recheckMs: file.recheckMs,
    storeQuotaBytes: file.storeQuotaBytes,
    checkpointKeep: file.checkpointKeep,
    guestDir: flag("--guest-dir", f.guestDir, GUEST_DIR) ?? file.guestDir ?? DEFAULT_GUEST_DIR,
    peers: m.peers ?? file.peers,
    zone: m.zone ?? file.zone,
    replicas: m.replicas ?? file.replicas,
    scrubRateBytes: flag("--scrub-rate", f.scrubRate, SCRUB_RATE, scrubRate) ?? file.scrubRateBytes,
    scrubEveryMs: flag(
      "--scrub-every",
      f.scrubEvery,
      SCRUB_EVERY_MS,
      (t) => parseDuration("--scrub-every", t),
    ) ?? file.scrubEveryMs,
  };
}
