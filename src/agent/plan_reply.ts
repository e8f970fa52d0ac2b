/**
 * The one check of an agent's answer to `ckpt.plan`, run by every caller before it acts on it: the
 * answer names the store, generation and fragment files that restores, merges and repairs then push
 * between agents and load, so a faulty agent, or one of another version, must not lead them out of
 * a store, to a negative or absurd size, or through an endless list. The bounds are the ones a
 * manifest dcres writes obeys (`ckpt/manifest.ts`) and the grammars of names (`codec/names.ts`), so
 * what the real handler answers for such a checkpoint passes (tests/agent_plan_reply_test.ts). Only
 * names cross the wire, so paths are checked by grammar here; the agent that opens one confines it
 * again (`agent/paths.ts`, `agent/store_files.ts`).
 */
import * as v from "valibot";
import { PAGE_SIZE } from "../accel/accel.ts";
import { grammarOf, isName, type NameKind, shown } from "../codec/names.ts";
import {
  isRecordedAddress,
  MAX_ADDRS,
  MAX_COPIES,
  MAX_MEM_SIZE,
  MAX_SUBS,
} from "../ckpt/manifest.ts";
import type { CheckpointPlan } from "./ckpt_files.ts";
import { MAX_LIST_ARG } from "./schemas.ts";

/**
 * Most fragments a plan may list. A restore or repair asks a holder for each fragment together with
 * its generation's manifest in one `ckpt.have`, whose list holds at most {@link MAX_LIST_ARG} files,
 * so a plan with more could not be restored anyway. (A split chain is merged at MERGE_AFTER
 * generations, `paging/split_merge.ts`, but a one-host chain of incremental checkpoints adds a
 * fragment each generation, without a bound of its own, so no smaller number is safe.)
 */
export const MAX_PLAN_FRAGMENTS = MAX_LIST_ARG / 2;

/** Most hosts a split may name: its main and each of its sub-hosts. */
const MAX_SPLIT_HOSTS = MAX_SUBS + 1;

/** What `split.hosts` maps main's name to; each sub-host's name maps to its agent address. */
const MAIN = "main";

/** The answer of an agent to `ckpt.plan` is not a plan this version can act on. */
export class BadPlanError extends Error {
  constructor(
    /** The address of the agent that answered. */
    readonly agent: string,
    /** The field at fault, as `fragments[2].path`. */
    readonly field: string,
    message: string,
  ) {
    super(message);
    this.name = "BadPlanError";
  }
}

/** True when `x` is a map: an object, not a list. */
const isMap = (x: unknown): x is Record<string, unknown> =>
  typeof x === "object" && x !== null && !Array.isArray(x);
/** `entries` as an object schema that takes maps only (a list is refused as one, not for its keys). */
const map = <E extends v.ObjectEntries>(entries: E) =>
  v.pipe(v.custom<Record<string, unknown>>(isMap, "not a map"), v.object(entries));

const name = (kind: NameKind) => {
  const what = `not ${grammarOf(kind)}`;
  return v.pipe(v.string(what), v.check((s) => isName(kind, s), what));
};
const count = (what: string, max = Number.MAX_SAFE_INTEGER) =>
  v.pipe(v.number(what), v.safeInteger(what), v.minValue(0, what), v.maxValue(max, what));
const bytes = count("not a whole number of bytes, 0 or more");
const memory = v.pipe(
  count(`not whole ${PAGE_SIZE}-byte pages of at most ${MAX_MEM_SIZE} bytes`, MAX_MEM_SIZE),
  v.check((n) => n % PAGE_SIZE === 0, `not whole ${PAGE_SIZE}-byte pages`),
);
const ADDRESS = "not an agent address (HOST:PORT)";
const address = v.pipe(v.string(ADDRESS), v.check((a) => isRecordedAddress(a), ADDRESS));
const host = name("host");

const copies = v.optional(v.pipe(
  v.array(host, `not a list of at most ${MAX_COPIES} hosts`),
  v.maxLength(MAX_COPIES, `more than ${MAX_COPIES} hosts`),
));
const fragment = v.pipe(
  map({ path: name("fragment-path"), host, bytes, copies }),
  // Copies on distinct hosts, none on the writer's, as a manifest keeps them.
  v.forward(
    v.check(
      (f) => new Set([f.host, ...(f.copies ?? [])]).size === (f.copies?.length ?? 0) + 1,
      "names a host twice (the writer's among them)",
    ),
    ["copies"],
  ),
);
const fragments = v.pipe(
  v.array(v.unknown(), "not a list of fragments"),
  // The length first: a long list is refused before any of it is looked at.
  v.maxLength(MAX_PLAN_FRAGMENTS, `more than ${MAX_PLAN_FRAGMENTS} fragments`),
  v.array(fragment),
);

/**
 * A map (not a list) of at most `max` entries, its keys host names and its values `value`: the
 * size first, so a huge map is refused before any of it is looked at.
 */
const hostMap = (max: number, value: v.GenericSchema<unknown, string>, what: string) =>
  v.pipe(
    v.custom<Record<string, unknown>>(
      (x) => isMap(x) && Object.keys(x).length <= max,
      what,
    ),
    v.record(host, value, what),
  );

const MAIN_OR_ADDRESS = `not "${MAIN}" nor an agent address (HOST:PORT)`;
const SPLIT_HOSTS = `not a map of at most ${MAX_SPLIT_HOSTS} hosts, one of them "${MAIN}"`;
const split = v.optional(map({
  mainMemBytes: memory,
  hosts: v.pipe(
    hostMap(
      MAX_SPLIT_HOSTS,
      v.pipe(
        v.string(MAIN_OR_ADDRESS),
        v.check((a) => a === MAIN || isRecordedAddress(a), MAIN_OR_ADDRESS),
      ),
      SPLIT_HOSTS,
    ),
    v.check((h) => Object.values(h).filter((a) => a === MAIN).length === 1, SPLIT_HOSTS),
  ),
  mainAddr: v.optional(address),
}));

const addrs = v.optional(
  hostMap(MAX_ADDRS, address, `not a map of at most ${MAX_ADDRS} hosts to agent addresses`),
);

/** The shape and bounds of a `ckpt.plan` answer; fields it does not know are dropped. */
export const PLAN_SCHEMA: v.GenericSchema<unknown, CheckpointPlan> = map({
  store: name("store"),
  inStore: v.boolean("not true or false"),
  generation: name("generation"),
  next: v.pipe(count("not a whole number from 1"), v.minValue(1, "not a whole number from 1")),
  id: name("checkpoint-id"),
  vm: name("vm"),
  memSize: memory,
  fragments,
  host: v.optional(host),
  split,
  addrs,
  taker: v.optional(host),
});

/**
 * Where `issue` lies in the answer, written as code would name it (`fragments[2].path`, `addrs key`
 * for a bad key of a map), and the value found there (undefined for a missing field).
 */
function located(issue: v.BaseIssue<unknown>): { field: string; value: unknown } {
  const path = issue.path ?? [];
  const last = path.at(-1);
  // A key a map must not hold: the key is the bad value, and the map names the field.
  const badKey = last?.origin === "key" && issue.type !== "object";
  let field = "";
  for (const p of badKey ? path.slice(0, -1) : path) {
    const key: unknown = p.key;
    if (typeof key === "number") field += `[${key}]`;
    else if (typeof key === "string" && /^[A-Za-z0-9_.:-]{1,80}$/.test(key)) {
      field += `${field ? "." : ""}${key}`;
    } else field += `[${shown(key)}]`;
  }
  if (badKey) return { field: `${field} key`, value: last.key };
  // A field missing from an object is the object's issue, its path item the missing key's.
  if (last?.origin === "key") return { field, value: undefined };
  return { field: field || "answer", value: last ? last.value : issue.input };
}

/** `x` as a one-line message shows it. */
function display(x: unknown): string {
  if (typeof x === "number" || typeof x === "boolean" || typeof x === "bigint" || x === null) {
    return String(x);
  }
  if (Array.isArray(x)) return `a list of ${x.length}`;
  if (typeof x === "object") return "a map";
  return shown(x);
}

/**
 * `reply`, the answer of the agent at `agent` to `ckpt.plan`, as a {@link CheckpointPlan} once it is
 * checked; else a {@link BadPlanError} whose message names the agent and the first bad field.
 */
export function checkPlan(agent: string, reply: unknown): CheckpointPlan {
  const r = v.safeParse(PLAN_SCHEMA, reply, { abortEarly: true });
  if (r.success) return r.output;
  const { field, value } = located(r.issues[0]);
  const what = value === undefined
    ? `no ${field}`
    : `a bad ${field} (${display(value)}, ${r.issues[0].message})`;
  throw new BadPlanError(
    agent,
    field,
    `the agent at ${agent} answered ckpt.plan with ${what}: it may run another dcres version or be faulty; go through another host that holds the checkpoint`,
  );
}
