/**
 * The shape of agent RPC arguments, checked with valibot before a handler runs (issue 14 item 4):
 * types, lengths and ranges at the boundary, so a handler's own checks (names, paths, page runs)
 * see well-formed input. Every method the agent serves has one (a test holds the table to
 * `agent/access.ts`).
 */
import * as v from "valibot";
import { CHECKPOINT_MODES, MAX_SUBS } from "../ckpt/manifest.ts";
import { MAX_KEEP } from "../ckpt/retention.ts";
import type { RpcHandler } from "../rpc/dispatcher.ts";
import { RpcError } from "../rpc/errors.ts";

// Names are only bounded here: each kind's grammar (codec/names.ts) checks them where they are used,
// with a message that names the grammar.
const name = v.pipe(v.string(), v.maxLength(65536));
/**
 * Most entries of a list argument naming a checkpoint's files or fragments (`ckpt.have`'s files,
 * `pages.load`'s fragments).
 */
export const MAX_LIST_ARG = 65536;
const file = v.pipe(v.string(), v.minLength(1), v.maxLength(4096));
const count = v.pipe(v.number(), v.safeInteger(), v.minValue(0));
/** An agent address, HOST:PORT (net/address.ts parses it when it is dialed). */
const address = v.pipe(v.string(), v.minLength(3), v.maxLength(300));
const ms = v.pipe(v.number(), v.minValue(0), v.maxValue(30 * 86400_000));
const store = { store: name };
const generation = { ...store, generation: name };
const vm = { name };
const flag = v.optional(v.boolean());
const split = v.optional(v.looseObject({
  mainMemBytes: count,
  subs: v.pipe(
    v.array(v.pipe(v.string(), v.maxLength(300))),
    v.minLength(1),
    v.maxLength(MAX_SUBS),
  ),
  holders: v.optional(v.pipe(v.array(count), v.maxLength(1 << 20))),
}));
const accel = v.optional(v.picklist(["auto", "kvm", "emu"]));
const pagesOf = { vm: name, pages: count };
const keep = v.pipe(v.number(), v.safeInteger(), v.minValue(1), v.maxValue(MAX_KEEP));
const saveId = v.pipe(v.string(), v.minLength(1), v.maxLength(64));

/** Argument schemas by method. */
export const AGENT_SCHEMAS: Readonly<Record<string, v.GenericSchema>> = {
  health: v.object({}),
  status: v.object({}),
  "vm.ls": v.object({}),
  "vm.start": v.object({
    spec: v.looseObject({ name, memSize: v.optional(count) }),
    forMs: v.optional(ms),
    split,
    accel,
  }),
  "vm.stop": v.object(vm),
  "vm.pause": v.object(vm),
  "vm.resume": v.object(vm),
  "vm.check": v.object(vm),
  "vm.gather": v.object(vm),
  "vm.console": v.object(vm),
  "vm.split": v.object({ ...vm, split: v.nonOptional(split) }),
  "vm.movesub": v.object({ ...vm, from: file, to: file }),
  "vm.exec": v.object({
    ...vm,
    cmd: v.pipe(v.string(), v.maxLength(65536)),
    timeoutMs: v.optional(ms),
  }),
  "guest.verify": v.object({ ...vm, timeoutMs: v.optional(ms) }),
  checkpoint: v.object({
    ...vm,
    dir: v.optional(file),
    mode: v.optional(v.picklist(CHECKPOINT_MODES)),
    incremental: flag,
    compress: flag,
    traditional: flag,
    maxDowntimeMs: v.optional(ms),
    replicas: v.optional(v.pipe(v.number(), v.safeInteger(), v.minValue(1), v.maxValue(16))),
    keep: v.optional(keep),
  }),
  restore: v.object({ path: file, name: v.optional(name), lazy: flag, accel, split }),
  "ckpt.ls": v.object({ path: file }),
  "ckpt.inspect": v.object({ path: file }),
  "ckpt.verify": v.object({ path: file }),
  "ckpt.plan": v.object({ path: file }),
  "ckpt.have": v.object({
    ...store,
    files: v.optional(v.pipe(v.array(file), v.maxLength(MAX_LIST_ARG))),
  }),
  "ckpt.get": v.object({ ...store, file }),
  "ckpt.put": v.object({ ...store, file, bytes: count }),
  "ckpt.push": v.object({ ...store, file, to: address, offset: v.optional(count), repair: flag }),
  "ckpt.pull": v.object({ ...store, file, to: address, offset: v.optional(count) }),
  "ckpt.receive": v.object({ ...store, file, bytes: count, offset: count, repair: flag }),
  "ckpt.replicate": v.looseObject({ ...store, file, maxBytes: count }),
  "ckpt.scrub": v.object({ store: v.optional(name) }),
  "ckpt.newest": v.object(store),
  "ckpt.merge.part": v.object({
    ...generation,
    newGeneration: count,
    host: name,
    id: v.pipe(v.string(), v.regex(/^[0-9a-f]{32}$/)),
  }),
  "ckpt.commit": v.object(generation),
  "ckpt.abort": v.object(generation),
  "ckpt.prune": v.object({
    ...store,
    keep: v.pipe(v.array(count), v.maxLength(MAX_KEEP)),
    upTo: count,
  }),
  "ckpt.gc": v.object({ store: v.optional(name), keep: v.optional(keep) }),
  "pages.open": v.looseObject({ vm: name, pages: count }),
  "pages.channel": v.looseObject({ vm: name, pages: count }),
  "pages.held": v.looseObject({ vm: name, pages: count }),
  "pages.drop": v.looseObject({ vm: name }),
  "pages.load": v.object({
    ...pagesOf,
    ckpt: file,
    fragments: v.pipe(v.array(count), v.maxLength(MAX_LIST_ARG)),
    lazy: v.optional(v.boolean()),
  }),
  "pages.save.begin": v.looseObject({ ...pagesOf, id: saveId }),
  "pages.save": v.looseObject({ ...pagesOf, id: saveId }),
  "pages.save.owe": v.looseObject({ ...pagesOf, id: saveId }),
  "pages.save.point": v.looseObject({ ...pagesOf, id: saveId }),
  "pages.save.finish": v.looseObject({ ...pagesOf, id: saveId }),
  "pages.save.commit": v.looseObject({ ...pagesOf, id: saveId }),
  "pages.save.abort": v.looseObject({ vm: name, id: v.optional(saveId) }),
  "agent.lease": v.strictObject({
    term: count,
    epoch: count,
    terms: v.strictObject({
      ttlMs: v.pipe(v.number(), v.minValue(1), v.maxValue(86400_000)),
      drift: v.pipe(v.number(), v.minValue(0), v.maxValue(0.5)),
      fenceMs: ms,
    }),
    grant: v.optional(v.pipe(v.string(), v.maxLength(64))),
    vmsWithinMs: v.optional(v.pipe(v.number(), v.integer(), v.minValue(10), v.maxValue(60_000))),
  }),
};

/** `handlers` with each listed method's arguments validated first; a failure is one bad-request line. */
export function validated(
  handlers: Record<string, RpcHandler>,
  schemas: Readonly<Record<string, v.GenericSchema>> = AGENT_SCHEMAS,
): Record<string, RpcHandler> {
  const out = { ...handlers };
  for (const [method, schema] of Object.entries(schemas)) {
    const h = handlers[method];
    if (!h) continue;
    out[method] = (args, ctx) => {
      const r = v.safeParse(schema, args);
      if (!r.success) {
        const issue = r.issues[0];
        const where = v.getDotPath(issue) ?? "args";
        throw new RpcError("bad-request", `${method}: ${where}: ${issue.message}`);
      }
      return h(args, ctx);
    };
  }
  return out;
}
