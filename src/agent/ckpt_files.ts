/**
 * The agent's checkpoint-file methods, with which a restore gathers a split checkpoint's files where
 * they are needed: what a checkpoint consists of (`ckpt.plan`), which of its files this agent lacks
 * or holds in part (`ckpt.have`), the newest generation of a store (`ckpt.newest`), merges and
 * commits; files move in and out through `store_transfer.ts`.
 */
import { basename, dirname, join } from "node:path";
import { takerOf } from "../ckpt/holders.ts";
import { CheckpointStore, generationName, resolveCheckpoint } from "../ckpt/store.ts";
import { commitManifest, decodeManifest } from "../ckpt/manifest.ts";
import type { CallerRole } from "../rpc/roles.ts";
import { asBadRequest, confine, nameArg } from "./paths.ts";
import { mergeHostPart } from "../ckpt/merge.ts";
import { removeGeneration } from "../ckpt/transaction.ts";
import type { RpcHandler } from "../rpc/dispatcher.ts";
import { RpcError } from "../rpc/errors.ts";
import { gather } from "../net/chunks.ts";
import { UploadSpace } from "./upload_space.ts";
import { transferHandlers } from "./store_transfer.ts";
import { retentionHandlers } from "./retention.ts";
import type { RpcClient } from "../net/quic.ts";
import { inStore, isCommitted } from "./store_files.ts";

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
  /** Fragments, in manifest order, with the other hosts holding copies of each. */
  fragments: Array<{ path: string; host: string; bytes: number; copies?: string[] }>;
  /** The name of the agent that answered (it holds this generation's manifest). */
  host?: string;
  /** The split it was taken with, for a split VM. */
  split?: { mainMemBytes: number; hosts: Record<string, string>; mainAddr?: string };
  /** The agent address of each writer and holder the manifest records (1.4). */
  addrs?: Record<string, string>;
  /** The host that took the checkpoint (a split VM's main), when the manifest says. */
  taker?: string;
}

/** The size of regular file `path`, or undefined when it is missing or not a regular file. */
function fileSize(path: string): number | undefined {
  try {
    const st = Deno.lstatSync(path);
    return st.isFile ? st.size : undefined;
  } catch {
    return undefined;
  }
}

/**
 * Handlers over the checkpoint root `root`; `resolve` turns a path or id into a generation dir;
 * uploads stay within `quotaBytes` of store files when set, and always within the disk's free space;
 * `onRepaired` hears of each copy pushed here in place of a lost or damaged one.
 */
export function ckptFileHandlers(
  root: string,
  resolve: (arg: unknown, role: CallerRole) => string,
  connect: (addr: string) => Promise<RpcClient>,
  quotaBytes?: number,
  host?: string,
  onRepaired?: () => void,
): Record<string, RpcHandler> {
  const space = new UploadSpace(root, quotaBytes);
  return {
    "ckpt.plan": (args, ctx) => {
      const { dir, manifest: m } = resolveCheckpoint(resolve(args.path, ctx.role));
      const taker = takerOf(m);
      const plan: CheckpointPlan = {
        store: basename(dirname(dir)),
        inStore: dirname(dirname(dir)) === root,
        generation: basename(dir),
        next: (new CheckpointStore(dirname(dir)).generations().pop()?.generation ?? 0) + 1,
        id: m.id,
        vm: m.vm,
        memSize: m.machine.spec.memSize,
        fragments: m.fragments.map((f) => ({
          path: f.path,
          host: f.host,
          bytes: f.bytes,
          ...(f.copies ? { copies: f.copies } : {}),
        })),
        ...(m.split ? { split: m.split } : {}),
        ...(m.addrs ? { addrs: m.addrs } : {}),
        ...(taker ? { taker } : {}),
        ...(host ? { host } : {}),
      };
      return Promise.resolve(plan);
    },
    "ckpt.have": (args) => {
      const files = Array.isArray(args.files) ? args.files : [];
      const missing: string[] = [], sizes: Record<string, number> = {};
      const partial: Record<string, number> = {};
      for (const f of files) {
        const path = inStore(root, { store: args.store, file: f }, "file");
        const size = fileSize(path);
        if (size !== undefined) sizes[f] = size;
        else missing.push(f);
        // What a push that broke left aside: the next one resumes from there.
        const part = fileSize(`${path}.part`);
        if (size === undefined && part !== undefined) partial[f] = part;
      }
      return Promise.resolve({ missing, sizes, partial });
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
    ...transferHandlers(root, space, connect, onRepaired),
    ...retentionHandlers(root, host),
  };
}
