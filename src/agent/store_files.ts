/**
 * The files of a checkpoint store that a peer may name: a generation, its fragments and its
 * MANIFEST, each by the project's grammars and then by its real path, which must stay inside the
 * agent's checkpoint root.
 */
import { join } from "node:path";
import { MANIFEST_FILE } from "../ckpt/manifest.ts";
import { isName, shown } from "../codec/names.ts";
import { RpcError } from "../rpc/errors.ts";
import { confine, nameArg } from "./paths.ts";

/** Bytes read or sent at a time when a store file is streamed. */
export const STORE_CHUNK = 512 * 1024;

/** A file a peer may name in a store: a generation's fragment or its MANIFEST. */
export function isStoreFile(f: unknown): f is string {
  if (isName("fragment-path", f)) return true;
  const [gen, name, ...rest] = String(f).split("/");
  return typeof f === "string" && rest.length === 0 && isName("generation", gen) &&
    name === MANIFEST_FILE;
}

/**
 * `file` (`gNNNNNN`, `gNNNNNN/HOST.frag` or `gNNNNNN/MANIFEST`) of store `store` under `root`: by
 * the grammars, then by the real path of the store, which must stay inside `root`.
 */
export function inStore(root: string, args: Record<string, unknown>, field: string): string {
  const store = nameArg(args, "store", "store"), file = args[field];
  if (!isStoreFile(file) && !isName("generation", file)) {
    throw new RpcError(
      "bad-request",
      `${field} ${shown(file)} is not gNNNNNN, gNNNNNN/HOST.frag nor gNNNNNN/MANIFEST`,
    );
  }
  const dir = confine(root, join(root, store), "store", store);
  return join(dir, file);
}

/** True when generation directory `dir` holds a committed MANIFEST. */
export function isCommitted(dir: string): boolean {
  try {
    Deno.lstatSync(join(dir, MANIFEST_FILE));
    return true;
  } catch {
    return false;
  }
}
