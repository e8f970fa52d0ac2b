/**
 * How names from a request become paths on this host. Peers send names and ids, never paths: a VM
 * name, a store name (`STORE` or `STORE/gNNNNNN`), a checkpoint id; the agent maps them inside its
 * data directory and checks that the real path (symlinks resolved) stays there. Only root on this
 * host (the agent's local socket) may name an absolute path, as it could open that path anyway.
 * Kernels and initrds come from the agent's guest directory, whoever asks.
 */
import { basename, dirname, isAbsolute, join } from "node:path";
import { existsSync } from "node:fs";
import { checkName, isName, NameError, type NameKind, shown } from "../codec/names.ts";
import { listGenerations } from "../ckpt/inspect.ts";
import { RpcError } from "../rpc/errors.ts";
import type { CallerRole } from "../rpc/roles.ts";

/** `args[field]` if it is a `kind` name, else a one-line bad-request naming the field and grammar. */
export function nameArg(args: Record<string, unknown>, field: string, kind: NameKind): string {
  try {
    return checkName(kind, field, args[field]);
  } catch (e) {
    throw asBadRequest(e);
  }
}

/** A refused name as the RPC error a caller sees; any other error as it was. */
export function asBadRequest(e: unknown): unknown {
  return e instanceof NameError ? new RpcError("bad-request", e.message) : e;
}

/** The real path of `path`, or of its parent joined to its last name when it does not exist yet. */
function realPath(path: string): string | undefined {
  try {
    return Deno.realPathSync(path);
  } catch {
    try {
      return join(Deno.realPathSync(dirname(path)), basename(path));
    } catch {
      return undefined;
    }
  }
}

/** `path` (named by `field` = `arg`) if its real path lies inside `root`, else a bad-request. */
export function confine(root: string, path: string, field: string, arg: unknown): string {
  const real = realPath(path), top = realPath(root);
  if (real === undefined || top === undefined) {
    throw new RpcError("bad-request", `${field} ${shown(arg)}: no such file or directory here`);
  }
  if (real !== top && !real.startsWith(`${top}/`)) {
    throw new RpcError("bad-request", `${field} ${shown(arg)} leads outside ${root}`);
  }
  return real;
}

/** A store name, or a store's generation: `STORE` or `STORE/gNNNNNN`. */
function isStorePath(arg: string): boolean {
  const [store, gen, ...rest] = arg.split("/");
  return rest.length === 0 && isName("store", store) &&
    (gen === undefined || isName("generation", gen));
}

const STORE_GRAMMAR = "a checkpoint id (8-32 hex digits), STORE or STORE/gNNNNNN";

/** A generation an id argument matches: by its own id, or as the merge of that id's chain. */
interface Hit {
  /** The full id matched. */
  id: string;
  /** The store holding it. */
  store: string;
  /** The generation directory. */
  dir: string;
}

/**
 * The one generation `exact` (ids matched) and `merged` (merges standing for a matched id), both in
 * ascending generation order per store, name; "ambiguous" when they name more than one checkpoint.
 * A checkpoint and merges of its chain are one consistency point: the newest merge in its store is
 * taken, since it stands alone, while the original's chain is being removed (a merge commits, then
 * removes what it squashed) and may have lost a parent already.
 */
function pickHit(exact: Hit[], merged: Hit[]): Hit | "ambiguous" | undefined {
  if (new Set([...exact, ...merged].map((h) => h.id)).size > 1) return "ambiguous";
  const stores = new Set([...exact, ...merged].map((h) => h.store));
  if (stores.size > 1) return "ambiguous";
  if (merged.length) return merged.at(-1);
  return exact.length > 1 ? "ambiguous" : exact[0];
}

/**
 * What a checkpoint argument names on this agent, whose stores are under `root`: a store name
 * (`STORE`, `STORE/gNNNNNN`), or a checkpoint id (its hex, or a unique prefix of at least 8 digits)
 * found in its stores, as that generation's directory or (`store`) the store holding it. Root on
 * this host may also give an absolute path.
 */
export function checkpointPath(
  root: string,
  arg: unknown,
  want: "generation" | "store",
  role: CallerRole,
  field = "path",
): string {
  if (typeof arg === "string" && isAbsolute(arg) && role === "root") return arg;
  if (typeof arg !== "string" || !(isStorePath(arg) || isName("checkpoint-id", arg))) {
    const why = typeof arg === "string" && isAbsolute(arg)
      ? "; paths are not accepted over the network"
      : "";
    throw new RpcError("bad-request", `${field} ${shown(arg)} is not ${STORE_GRAMMAR}${why}`);
  }
  const path = join(root, arg);
  if (!isName("checkpoint-id", arg) || existsSync(path)) return confine(root, path, field, arg);
  const exact: Hit[] = [];
  const merged: Hit[] = [];
  for (const e of safeReadDir(root)) {
    if (!e.isDirectory) continue;
    for (const g of listGenerations(join(root, e.name))) {
      const store = join(root, e.name);
      if (g.id?.startsWith(arg)) exact.push({ id: g.id, store, dir: g.dir });
      else if (g.mergedFromId?.startsWith(arg)) {
        merged.push({ id: g.mergedFromId, store, dir: g.dir });
      }
    }
  }
  const hit = pickHit(exact, merged);
  if (hit === undefined) {
    throw new RpcError(
      "bad-request",
      `no checkpoint with id ${arg} in this agent's stores ('dcres status' lists them)`,
    );
  }
  if (hit === "ambiguous") {
    throw new RpcError("bad-request", `checkpoint id ${arg} is ambiguous here; give more digits`);
  }
  return confine(root, want === "store" ? hit.store : hit.dir, field, arg);
}

/**
 * A kernel or initrd of a VM started through this agent: a file name in `guestDir`, or a path whose
 * real path lies there. Nothing else on the host may be loaded into a guest.
 */
export function guestFile(guestDir: string, field: string, v: unknown): string {
  if (typeof v !== "string" || v === "" || v.includes("\0")) {
    throw new RpcError("bad-request", `${field} ${shown(v)} is not a file of ${guestDir}`);
  }
  const path = isAbsolute(v) ? v : join(guestDir, v);
  if (!isAbsolute(v) && v.split("/").includes("..")) {
    throw new RpcError("bad-request", `${field} ${shown(v)} leads outside ${guestDir}`);
  }
  return confine(guestDir, path, field, v);
}

/** The entries of `dir`, none when it cannot be read. */
export function safeReadDir(dir: string): Deno.DirEntry[] {
  try {
    return [...Deno.readDirSync(dir)];
  } catch {
    return [];
  }
}

/** A checkpoint's target store under `root`: a store name; root on this host may give a path. */
export function storeArg(root: string, arg: unknown, role: CallerRole, field = "dir"): string {
  if (typeof arg === "string" && isAbsolute(arg) && role === "root") return arg;
  try {
    return confine(root, join(root, checkName("store", field, arg)), field, arg);
  } catch (e) {
    throw asBadRequest(e);
  }
}
