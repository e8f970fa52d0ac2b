/**
 * The agent's retention methods: `ckpt.gc` decides, from this agent's stores, which generations
 * stay (every consistency point, or `keep` of them), removes the rest here and names the other
 * hosts its manifests say hold fragments or copies; `ckpt.prune` removes, in one store, what such a
 * decision did not keep (a split VM's main host or `dcres ckpt gc` asks it of every holder).
 */
import { join } from "node:path";
import { type Manifest, readManifest } from "../ckpt/manifest.ts";
import { keepArg, type Pruned, pruneStore, retainStore } from "../ckpt/retention.ts";
import { CheckpointStore } from "../ckpt/store.ts";
import type { RpcHandler } from "../rpc/dispatcher.ts";
import { RpcError } from "../rpc/errors.ts";
import { confine, nameArg, safeReadDir } from "./paths.ts";
import { isName } from "../codec/names.ts";

/** Another host holding part of a store's checkpoints, and its agent's address when known. */
export interface StoreHolder {
  /** Its name in the manifests. */
  host: string;
  /** Its agent's address (absent: no manifest records it). */
  addr?: string;
}

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
 * The hosts other than `self` that store `dir`'s committed manifests name (writers and holders of
 * copies), the newest manifest's address for each.
 */
function holdersOf(dir: string, self: string | undefined): StoreHolder[] {
  const out = new Map<string, string | undefined>();
  for (const g of new CheckpointStore(dir).generations().filter((g) => g.committed)) {
    let m: Manifest;
    try {
      m = readManifest(g.dir);
    } catch {
      continue; // retainStore refuses the store, naming this generation
    }
    const hosts = m.split?.hosts ?? {};
    for (const name of new Set(m.fragments.flatMap((f) => [f.host, ...(f.copies ?? [])]))) {
      if (name === self || !isName("host", name)) continue;
      const addr = hosts[name] === "main" ? m.split?.mainAddr : hosts[name];
      out.set(name, addr ?? out.get(name));
    }
  }
  return [...out].map(([host, addr]) => addr ? { host, addr } : { host });
}

/** Retention handlers over checkpoint root `root` of the agent named `self`. */
export function retentionHandlers(root: string, self?: string): Record<string, RpcHandler> {
  const storeDir = (store: string) => confine(root, join(root, store), "store", store);
  return {
    "ckpt.prune": (args) => {
      const dir = storeDir(nameArg(args, "store", "store"));
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
          const others = holdersOf(dir, self);
          out.push({ store, ...retainStore(dir, keep), others });
        } catch (e) {
          throw refused(e);
        }
      }
      return Promise.resolve({ host: self, stores: out });
    },
  };
}
