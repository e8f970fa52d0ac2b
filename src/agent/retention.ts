/**
 * The agent's retention methods: `ckpt.gc` decides, from this agent's stores, which generations
 * stay (every consistency point, or `keep` of them), removes the rest here and names the other
 * hosts its manifests say hold fragments or copies; `ckpt.prune` removes, in one store, what such a
 * decision did not keep (a split VM's main host or `dcres ckpt gc` asks it of every holder).
 */
import { join } from "node:path";
import { type StoreHolder, storeHolders, takerOf } from "../ckpt/holders.ts";
import { keepArg, type Pruned, pruneStore, retainStore } from "../ckpt/retention.ts";
import { CheckpointStore } from "../ckpt/store.ts";
import type { RpcHandler } from "../rpc/dispatcher.ts";
import { RpcError } from "../rpc/errors.ts";
import { confine, nameArg, safeReadDir } from "./paths.ts";
import { isName } from "../codec/names.ts";

/** What `ckpt.gc` did in one store. */
export interface StoreGc {
  /** The store (a VM's name). */
  store: string;
  /** The generations kept. */
  kept: number[];
  /** The newest generation committed here: no host removes anything newer. */
  upTo: number;
  /** What was removed here. */
  removed: Pruned[];
  /** The other hosts the manifests name, to be asked `ckpt.prune`. */
  others: StoreHolder[];
}

/** A retention refusal as the caller's one-line bad-request. */
function refused(e: unknown): unknown {
  return e instanceof Error && e.name === "RetentionError"
    ? new RpcError("bad-request", e.message)
    : e;
}

/**
 * Refuses an agent's prune of store `store` (at `dir`) unless it is the host that took the newest
 * checkpoint committed here (a one-host VM's host, a split VM's main): no other member of the
 * cluster may remove a VM's copies. A store whose manifests name no such host (before 1.4, one-host)
 * is left to the rule that held then.
 */
function onlyFromTaker(dir: string, store: string, caller: string): void {
  let taker: string | undefined;
  try {
    const m = new CheckpointStore(dir).latest()?.manifest;
    taker = m && takerOf(m);
  } catch {
    // A damaged newest manifest: pruneStore refuses the store, naming it.
  }
  if (taker !== undefined && taker !== caller) {
    throw new RpcError(
      "permission-denied",
      `ckpt.prune of ${store} by ${caller}: its checkpoints here were taken by ${taker}, the only agent that may prune them`,
    );
  }
}

/** Retention handlers over checkpoint root `root` of the agent named `self`. */
export function retentionHandlers(root: string, self?: string): Record<string, RpcHandler> {
  const storeDir = (store: string) => confine(root, join(root, store), "store", store);
  return {
    "ckpt.prune": (args, ctx) => {
      const store = nameArg(args, "store", "store");
      const dir = storeDir(store);
      if (ctx.role === "agent") onlyFromTaker(dir, store, ctx.peer);
      const keep = args.keep, upTo = args.upTo;
      if (!Array.isArray(keep) || !keep.every((g) => Number.isSafeInteger(g) && g > 0)) {
        throw new RpcError("bad-request", "keep must list the generations kept");
      }
      if (!Number.isSafeInteger(upTo) || (upTo as number) < 0) {
        throw new RpcError("bad-request", "upTo must be the newest generation decided on");
      }
      try {
        return Promise.resolve({ removed: pruneStore(dir, keep, upTo as number) });
      } catch (e) {
        throw refused(e);
      }
    },
    "ckpt.gc": (args) => {
      let keep: number | undefined;
      try {
        keep = keepArg(args.keep, "keep");
      } catch (e) {
        throw refused(e);
      }
      const stores = args.store === undefined
        ? safeReadDir(root).filter((e) => e.isDirectory && isName("store", e.name)).map((e) =>
          e.name
        )
        : [nameArg(args, "store", "store")];
      const out: StoreGc[] = [];
      for (const store of stores) {
        const dir = storeDir(store);
        try {
          // Read before removing: a removed generation's copies are elsewhere too.
          const others = storeHolders(dir, [self]);
          out.push({ store, ...retainStore(dir, keep), others });
        } catch (e) {
          throw refused(e);
        }
      }
      return Promise.resolve({ host: self, stores: out });
    },
  };
}
