/**
 * The one encoding of the coordinator's records and events, shared by both stores: JSON, at most
 * {@link MAX_VALUE_BYTES}, checked with valibot when written and again when read back, since a
 * store's bytes are input like any other (a damaged file, an etcd another program writes to).
 */
import * as v from "valibot";
import { CHECKPOINT_MODES } from "../ckpt/manifest.ts";
import { isName, type NameKind, shown } from "../codec/names.ts";
import {
  type CoordEventInput,
  type EventQuery,
  MAX_EVENTS_READ,
  MAX_OPS,
  RecordError,
  type RecordKind,
  type RecordOf,
  StateCorruptError,
  type StateOp,
} from "./state.ts";

/** Largest value of one record or event, in bytes. */
export const MAX_VALUE_BYTES = 16384;
/** The kinds of record. */
export const RECORD_KINDS: readonly RecordKind[] = ["policy", "placement", "checkpoint", "lease"];
const MAX_HOSTS = 64;
const DAY_MS = 86400_000;

const named = (kind: NameKind) =>
  v.pipe(v.string(), v.check((s) => isName(kind, s), `not a ${kind.replace("-", " ")} name`));
const count = (max: number) => v.pipe(v.number(), v.safeInteger(), v.minValue(0), v.maxValue(max));
const time = count(Number.MAX_SAFE_INTEGER);
const hosts = v.pipe(v.array(named("host")), v.maxLength(MAX_HOSTS));

const SCHEMAS: { [K in RecordKind]: v.GenericSchema<RecordOf[K]> } = {
  policy: v.strictObject({
    vm: named("vm"),
    everyMs: v.pipe(count(366 * DAY_MS), v.minValue(1000)),
    mode: v.picklist(CHECKPOINT_MODES),
    incremental: v.boolean(),
    fullEvery: count(1_000_000),
    keep: v.pipe(count(10_000), v.minValue(1)),
    replicas: v.pipe(count(16), v.minValue(1)),
  }),
  placement: v.strictObject({ vm: named("vm"), main: named("host"), subs: hosts }),
  checkpoint: v.strictObject({
    vm: named("vm"),
    id: named("checkpoint-id"),
    generation: count(999_999),
    timeMs: time,
    hosts,
  }),
  lease: v.strictObject({
    host: named("host"),
    expiresMs: time,
    epoch: time,
    state: v.optional(v.picklist(["up", "suspect", "down"])),
  }),
};

const EVENT: v.GenericSchema<CoordEventInput> = v.strictObject({
  kind: v.pipe(v.string(), v.regex(/^[a-z]+(-[a-z]+)*$/), v.maxLength(40)),
  timeMs: time,
  vm: v.optional(named("vm")),
  host: v.optional(named("host")),
  recoveryMs: v.optional(time),
  checkpoint: v.optional(named("checkpoint-id")),
  recoveryPointMs: v.optional(time),
  detail: v.optional(v.pipe(v.string(), v.maxLength(1000))),
});

/** The key a record is stored under: its VM, host, or `VM/ID` for a catalog entry. */
export function keyOf<K extends RecordKind>(kind: K, value: RecordOf[K]): string {
  switch (kind) {
    case "lease":
      return (value as RecordOf["lease"]).host;
    case "checkpoint": {
      const c = value as RecordOf["checkpoint"];
      return `${c.vm}/${c.id}`;
    }
    default:
      return (value as RecordOf["policy" | "placement"]).vm;
  }
}

/** True when `key` can be a key of `kind` (so it is safe in a store path or etcd key). */
export function isKey(kind: RecordKind, key: string): boolean {
  if (kind === "lease") return isName("host", key);
  if (kind !== "checkpoint") return isName("vm", key);
  const slash = key.indexOf("/");
  return isName("vm", key.slice(0, slash)) && isName("checkpoint-id", key.slice(slash + 1));
}

/** `list`'s VM filter is for catalog entries only, and must be a VM name. */
export function checkListVm(kind: RecordKind, vm: string | undefined): void {
  if (vm === undefined) return;
  if (kind !== "checkpoint") throw new RangeError(`list(${kind}) takes no VM; use get`);
  if (!isName("vm", vm)) throw new RangeError(`${shown(vm)} is not a VM name`);
}

function issues(err: v.ValiError<v.GenericSchema>): string {
  return err.issues.slice(0, 3).map((i) => {
    const path = i.path?.map((p) => String(p.key)).join(".");
    return path ? `${path}: ${i.message}` : i.message;
  }).join("; ");
}

function parse<T>(schema: v.GenericSchema<T>, x: unknown, what: string): T {
  try {
    return v.parse(schema, x);
  } catch (e) {
    if (e instanceof v.ValiError) throw new RecordError(`${what}: ${issues(e)}`);
    throw e;
  }
}

function encode(x: unknown, what: string): string {
  const json = JSON.stringify(x);
  const n = new TextEncoder().encode(json).length;
  if (n > MAX_VALUE_BYTES) throw new RecordError(`${what} is ${n} bytes, over ${MAX_VALUE_BYTES}`);
  return json;
}

/** `ops` checked (shapes, names, sizes, count), each value encoded; throws {@link RecordError}. */
export function checkOps(ops: StateOp[], max = MAX_OPS): EncodedOp[] {
  if (ops.length === 0 || ops.length > max) {
    throw new RecordError(`a commit has ${ops.length} steps; give 1 to ${max}`);
  }
  const steps = ops.map((op): EncodedOp => {
    if (op.op === "event") {
      const e = parse(EVENT, op.event, `event ${shown(op.event?.kind)}`);
      return { op: "event", timeMs: e.timeMs, json: encode(e, `event ${e.kind}`) };
    }
    if (!RECORD_KINDS.includes(op.kind)) throw new RecordError(`no record kind ${shown(op.kind)}`);
    if (op.expect !== undefined && !(Number.isSafeInteger(op.expect) && op.expect >= 0)) {
      throw new RecordError(`expect ${op.expect} is not a revision`);
    }
    if (op.op === "delete") {
      if (!isKey(op.kind, op.key)) {
        throw new RecordError(`${op.kind} key ${shown(op.key)} is not valid`);
      }
      return { op: "delete", kind: op.kind, key: op.key, expect: op.expect };
    }
    const value = parse(SCHEMAS[op.kind] as v.GenericSchema, op.value, op.kind);
    const key = keyOf(op.kind, value as RecordOf[typeof op.kind]);
    return {
      op: "put",
      kind: op.kind,
      key,
      json: encode(value, `${op.kind} ${key}`),
      expect: op.expect,
    };
  });
  // etcd refuses a txn that touches a key twice; the stores agree by refusing it here.
  const seen = new Set<string>();
  for (const s of steps) {
    if (s.op === "event") continue;
    if (seen.has(`${s.kind} ${s.key}`)) {
      throw new RecordError(`a commit touches ${s.kind} ${s.key} twice; merge those steps`);
    }
    seen.add(`${s.kind} ${s.key}`);
  }
  return steps;
}

/** A checked step, its value as JSON. */
export type EncodedOp =
  | { op: "put"; kind: RecordKind; key: string; json: string; expect?: number }
  | { op: "delete"; kind: RecordKind; key: string; expect?: number }
  | { op: "event"; timeMs: number; json: string };

function decodeJson(bytes: Uint8Array | string, where: string, what: string): unknown {
  const n = typeof bytes === "string" ? new TextEncoder().encode(bytes).length : bytes.length;
  if (n > MAX_VALUE_BYTES) {
    throw new StateCorruptError(
      where,
      `${what} is ${n} bytes, over ${MAX_VALUE_BYTES}; the store is damaged or another program wrote it: remove or restore that value`,
    );
  }
  try {
    return JSON.parse(
      typeof bytes === "string" ? bytes : new TextDecoder("utf-8", { fatal: true }).decode(bytes),
    );
  } catch {
    throw new StateCorruptError(
      where,
      `${what} is not JSON; the store is damaged or another program wrote it: remove or restore that value`,
    );
  }
}

function checked<T>(schema: v.GenericSchema<T>, x: unknown, where: string, what: string): T {
  try {
    return parse(schema, x, what);
  } catch (e) {
    if (!(e instanceof RecordError)) throw e;
    throw new StateCorruptError(
      where,
      `${e.message}; the store is damaged or another program wrote it: remove or restore that value`,
    );
  }
}

/** A stored record read back: bounded, parsed, checked, and its key matching its fields. */
export function decodeRecord<K extends RecordKind>(
  kind: K,
  key: string,
  bytes: Uint8Array | string,
  where: string,
): RecordOf[K] {
  const what = `${kind} ${JSON.stringify(key.slice(0, 300))}`;
  const value = checked(SCHEMAS[kind], decodeJson(bytes, where, what), where, what);
  if (keyOf(kind, value) !== key) {
    throw new StateCorruptError(where, `${what} holds the record of ${keyOf(kind, value)}`);
  }
  return value;
}

/** Most records one `list` returns; a store holding more is refused rather than read whole. */
export const MAX_LIST = 10_000;

/** `beforeMs` if it is a time, else a RangeError. */
export function checkTime(beforeMs: number): number {
  if (!Number.isSafeInteger(beforeMs) || beforeMs < 0) {
    throw new RangeError(`${beforeMs} is not a time in ms since the epoch`);
  }
  return beforeMs;
}

/** `query` checked, with its defaults: after seq 0, at most {@link MAX_EVENTS_READ}. */
export function eventQuery(query: EventQuery): Required<EventQuery> {
  const { after = 0, limit = MAX_EVENTS_READ } = query;
  if (!Number.isSafeInteger(after) || after < 0) {
    throw new RangeError(`event seq ${after} is not a seq`);
  }
  if (!Number.isSafeInteger(limit) || limit < 1) {
    throw new RangeError(`event limit ${limit} is not a count`);
  }
  return { after, limit: Math.min(limit, MAX_EVENTS_READ) };
}

/** A stored event read back. */
export function decodeEvent(
  bytes: Uint8Array | string,
  where: string,
  seq: number,
): CoordEventInput {
  const what = `event ${seq}`;
  return checked(EVENT, decodeJson(bytes, where, what), where, what);
}
