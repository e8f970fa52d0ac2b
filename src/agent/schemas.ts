/**
 * The shape of agent RPC arguments, checked with valibot before a handler runs (issue 14 item 4):
 * types, lengths and ranges at the boundary, so a handler's own checks (names, paths, page runs)
 * see well-formed input. Methods not listed here are still checked by their handlers alone.
 */
import * as v from "valibot";
import type { RpcHandler } from "../rpc/dispatcher.ts";
import { RpcError } from "../rpc/errors.ts";

const name = v.pipe(v.string(), v.minLength(1), v.maxLength(255));
const file = v.pipe(v.string(), v.minLength(1), v.maxLength(4096));
const count = v.pipe(v.number(), v.safeInteger(), v.minValue(0));
const ms = v.pipe(v.number(), v.minValue(0), v.maxValue(30 * 86400_000));
const store = { store: name };
const generation = { ...store, generation: name };

/** Argument schemas by method. */
export const AGENT_SCHEMAS: Readonly<Record<string, v.GenericSchema>> = {
  "vm.start": v.object({
    spec: v.looseObject({ name, memSize: v.optional(count) }),
    forMs: v.optional(ms),
    split: v.optional(v.unknown()),
    accel: v.optional(v.string()),
  }),
  "ckpt.plan": v.object({ path: file }),
  "ckpt.have": v.object({ ...store, files: v.optional(v.pipe(v.array(file), v.maxLength(65536))) }),
  "ckpt.get": v.object({ ...store, file }),
  "ckpt.put": v.object({ ...store, file, bytes: count }),
  "ckpt.merge.part": v.object({
    ...generation,
    newGeneration: count,
    host: name,
    id: v.pipe(v.string(), v.regex(/^[0-9a-f]{32}$/)),
  }),
  "ckpt.commit": v.object(generation),
  "ckpt.abort": v.object(generation),
  "pages.open": v.looseObject({ vm: name, pages: count }),
  "pages.channel": v.looseObject({ vm: name, pages: count }),
  "pages.held": v.looseObject({ vm: name, pages: count }),
  "pages.drop": v.looseObject({ vm: name }),
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
