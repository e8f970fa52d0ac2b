/**
 * The agent's checkpoint-file methods, with which a restore gathers a split checkpoint's files where
 * they are needed: what a checkpoint consists of (`ckpt.plan`), which of its files this agent lacks
 * (`ckpt.have`), and a file streamed out (`ckpt.get`) or in (`ckpt.put`, written aside, fsynced and
 * renamed into place, so a broken copy never looks like a fragment).
 */
import { basename, dirname, join } from "node:path";
import { existsSync } from "node:fs";
import { CheckpointStore, generationName, resolveCheckpoint } from "../ckpt/store.ts";
import { placeFile } from "../ffi/atomic_file.ts";
import { commitManifest, decodeManifest, MANIFEST_FILE } from "../ckpt/manifest.ts";
import * as libc from "../ffi/libc.ts";
import { openRegular } from "../ffi/regular_file.ts";
import { isName, shown } from "../codec/names.ts";
import type { CallerRole } from "../rpc/roles.ts";
import { asBadRequest, confine, nameArg } from "./paths.ts";
import { mergeHostPart } from "../ckpt/merge.ts";
import { removeGeneration } from "../ckpt/transaction.ts";
import type { RpcHandler } from "../rpc/dispatcher.ts";
import { RpcError } from "../rpc/errors.ts";
import { gather } from "../net/chunks.ts";
import { UploadSpace } from "./upload_space.ts";

/** What a restore needs to know of a checkpoint. */
export interface CheckpointPlan {
  /** Store directory name under the agent's checkpoint root. */
  store: string;
  /** False when the checkpoint lies outside the agent's checkpoint root (its files cannot be copied). */
  inStore: boolean;
  /** Generation directory name. */
  generation: string;
  /** The generation number a new generation of this store would get here. */
  next: number;
  /** Checkpoint id. */
  id: string;
  /** VM name. */
  vm: string;
  /** Guest memory size. */
  memSize: number;
  /** Fragments, in manifest order. */
  fragments: Array<{ path: string; host: string; bytes: number }>;
  /** The split it was taken with, for a split VM. */
  split?: { mainMemBytes: number; hosts: Record<string, string> };
}

const CHUNK = 512 * 1024;

/** A file a peer may name in a store: a generation's fragment or its MANIFEST. */
function isStoreFile(f: unknown): f is string {
  if (isName("fragment-path", f)) return true;
  const [gen, name, ...rest] = String(f).split("/");
  return typeof f === "string" && rest.length === 0 && isName("generation", gen) &&
    name === MANIFEST_FILE;
}

/**
 * `file` (`gNNNNNN`, `gNNNNNN/HOST.frag` or `gNNNNNN/MANIFEST`) of store `store` under `root`: by
 * the grammars, then by the real path of the store, which must stay inside `root`.
 */
function inStore(root: string, args: Record<string, unknown>, field: string): string {
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
function isCommitted(dir: string): boolean {
  try {
    Deno.lstatSync(join(dir, MANIFEST_FILE));
    return true;
  } catch {
    return false;
  }
}

/**
 * Handlers over the checkpoint root `root`; `resolve` turns a path or id into a generation dir;
 * uploads stay within `quotaBytes` of store files when set, and always within the disk's free space.
 */
export function ckptFileHandlers(
  root: string,
  resolve: (arg: unknown, role: CallerRole) => string,
  quotaBytes?: number,
): Record<string, RpcHandler> {
  const space = new UploadSpace(root, quotaBytes);
  return {
    "ckpt.plan": (args, ctx) => {
      const { dir, manifest: m } = resolveCheckpoint(resolve(args.path, ctx.role));
      const plan: CheckpointPlan = {
        store: basename(dirname(dir)),
        inStore: dirname(dirname(dir)) === root,
        generation: basename(dir),
        next: (new CheckpointStore(dirname(dir)).generations().pop()?.generation ?? 0) + 1,
        id: m.id,
        vm: m.vm,
        memSize: m.machine.spec.memSize,
        fragments: m.fragments.map((f) => ({ path: f.path, host: f.host, bytes: f.bytes })),
        ...(m.split ? { split: m.split } : {}),
      };
      return Promise.resolve(plan);
    },
    "ckpt.have": (args) => {
      const files = Array.isArray(args.files) ? args.files : [];
      const missing: string[] = [], sizes: Record<string, number> = {};
      for (const f of files) {
        try {
          const st = Deno.lstatSync(inStore(root, { store: args.store, file: f }, "file"));
          if (st.isFile) sizes[f] = st.size;
          else missing.push(f);
        } catch {
          missing.push(f);
        }
      }
      return Promise.resolve({ missing, sizes });
    },
    "ckpt.get": async (args, ctx) => {
      const path = inStore(root, args, "file");
      let file: { fd: number; size: number };
      try {
        file = openRegular(path);
      } catch (e) {
        throw new RpcError("bad-request", (e as Error).message);
      }
      try {
        const buf = new Uint8Array(CHUNK);
        let bytes = 0;
        for (;;) {
          const n = libc.pread(file.fd, Deno.UnsafePointer.of(buf), CHUNK, bytes);
          if (n <= 0) break;
          await ctx.send(buf.slice(0, n));
          bytes += n;
        }
        return { bytes };
      } finally {
        libc.close(file.fd);
      }
    },
    "ckpt.newest": (args) => {
      const store = nameArg(args, "store", "store");
      const dir = confine(root, join(root, store), "store", store);
      return Promise.resolve({ generation: new CheckpointStore(dir).newestCommitted() });
    },
    "ckpt.merge.part": async (args) => {
      const src = inStore(
        root,
        { ...args, generation: nameArg(args, "generation", "generation") },
        "generation",
      );
      const generation = args.newGeneration, id = args.id, host = nameArg(args, "host", "host");
      if (!Number.isSafeInteger(generation) || (generation as number) < 1) {
        throw new RpcError("bad-request", "newGeneration must be a positive integer");
      }
      if (typeof id !== "string" || !/^[0-9a-f]{32}$/.test(id)) {
        throw new RpcError("bad-request", "id must be 32 hex digits");
      }
      const idBytes = Uint8Array.from(id.match(/../g)!.map((h) => parseInt(h, 16)));
      const storeRoot = dirname(src);
      const sum = await mergeHostPart(src, storeRoot, host, generation as number, idBytes).catch(
        (e) => {
          throw asBadRequest(e);
        },
      );
      return {
        path: `${generationName(generation as number)}/${host}.frag`,
        pages: sum.pages,
        zeroPages: sum.zeroPages,
        dataBytes: sum.dataBytes,
        fileBytes: sum.fileBytes,
        footerCrc: sum.footerCrc,
      };
    },
    "ckpt.commit": async (args, ctx) => {
      const dir = inStore(
        root,
        { ...args, generation: nameArg(args, "generation", "generation") },
        "generation",
      );
      if (isCommitted(dir)) {
        throw new RpcError(
          "bad-request",
          `${dir} is committed; a committed generation never changes`,
        );
      }
      const bytes = await gather(ctx.data);
      commitManifest(dir, decodeManifest(`${dir}/MANIFEST (sent)`, bytes));
      return { committed: dir };
    },
    "ckpt.abort": (args) => {
      const dir = inStore(
        root,
        { ...args, generation: nameArg(args, "generation", "generation") },
        "generation",
      );
      const committed = isCommitted(dir);
      if (!committed) removeGeneration(dir);
      return Promise.resolve({ removed: !committed });
    },
    "ckpt.put": async (args, ctx) => {
      const path = inStore(root, args, "file");
      const gen = dirname(path);
      // Committed generations are immutable: nothing in one is replaced, and a MANIFEST never is.
      const keep = isCommitted(gen) || basename(path) === MANIFEST_FILE;
      const refuse = () =>
        new RpcError(
          "bad-request",
          `${args.file} exists in a committed generation; it never changes`,
        );
      if (keep && existsSync(path)) throw refuse();
      const declared = args.bytes;
      if (!Number.isSafeInteger(declared) || (declared as number) < 0) {
        throw new RpcError("bad-request", `${args.file}: bytes (the size to upload) is required`);
      }
      const bytes = declared as number;
      Deno.mkdirSync(gen, { recursive: true, mode: 0o700 });
      // Every byte is reserved before the first is written, so a refusal never comes mid-write,
      // and an upload that ends the disk's space ends in its own .part file, never another's.
      const release = space.reserve(args.file as string, bytes);
      const tmp = `${path}.part`;
      let got = 0;
      try {
        using f = await Deno.open(tmp, { write: true, create: true, truncate: true, mode: 0o600 });
        for await (const b of ctx.data) {
          got += b.length;
          if (got > bytes) {
            throw new RpcError(
              "bad-request",
              `${args.file}: more than the ${bytes} bytes declared`,
            );
          }
          for (let o = 0; o < b.length;) o += await f.write(b.subarray(o));
        }
        if (got !== bytes) {
          throw new RpcError("bad-request", `${args.file}: got ${got} bytes, expected ${bytes}`);
        }
        await f.syncData();
      } catch (e) {
        Deno.removeSync(tmp);
        throw e;
      } finally {
        release();
      }
      placeFile(tmp, path, keep ? { replace: false, exists: refuse } : {});
      return { bytes };
    },
  };
}
