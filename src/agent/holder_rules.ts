/**
 * What one holder of a fragment copy does for another agent (issue 15 item 3, docs/SECURITY.md):
 * push it a copy the manifest here says it holds (`ckpt.pull`), and say which of the files it
 * names are here (`ckpt.have`), showing a size only for files whose manifest names it a holder.
 * So an agent's certificate opens only checkpoints it was given a copy of.
 */
import { dirname, join } from "node:path";
import { existsSync } from "node:fs";
import { MANIFEST_FILE, readManifest } from "../ckpt/manifest.ts";
import { addressOf } from "../ckpt/holders.ts";
import type { RpcClient } from "../net/quic.ts";
import type { RpcContext, RpcHandler } from "../rpc/dispatcher.ts";
import { RpcError } from "../rpc/errors.ts";
import { inStore } from "./store_files.ts";
import { pushStoreFile } from "./store_transfer.ts";

/** Fragment `file` of store `store` in the manifest of its own generation here, with its holders. */
export function fragmentEntry(root: string, store: string, file: string) {
  const m = readManifest(join(root, store, dirname(file)));
  const f = m.fragments.find((x) => x.path === file && x.generation === m.generation);
  return f && { m, f, holders: [f.host, ...(f.copies ?? [])] };
}

/** True when `path` is a whole copy of a fragment `bytes` long. */
export function wholeHere(path: string, bytes: number): boolean {
  return existsSync(path) && Deno.lstatSync(path).size === bytes;
}

/** True when the manifest here names host `peer` a holder of `file` (of any fragment, for a MANIFEST). */
function namesHolder(root: string, store: string, file: string, peer: string): boolean {
  try {
    if (file.endsWith(`/${MANIFEST_FILE}`)) {
      const m = readManifest(join(root, store, dirname(file)));
      return m.fragments.some((f) =>
        f.generation === m.generation && [f.host, ...(f.copies ?? [])].includes(peer)
      );
    }
    return fragmentEntry(root, store, file)?.holders.includes(peer) ?? false;
  } catch {
    return false;
  }
}

/**
 * `ckpt.pull {store, file, to, offset?}`: an agent asks this holder to push fragment `file` to it,
 * only for a fragment this host holds whole, whose manifest here names the caller a holder, and
 * only to the caller's own address in that manifest. `ckpt.have` (`have`, the operators' method)
 * for an agent: what is missing, and sizes only of files the manifest names it a holder of.
 */
export function holderHandlers(
  root: string,
  connect: (addr: string) => Promise<RpcClient>,
  have: RpcHandler,
): Record<string, RpcHandler> {
  return {
    "ckpt.pull": (args, ctx) => {
      const path = inStore(root, args, "file");
      const store = String(args.store), file = String(args.file);
      const deny = (why: string) =>
        new RpcError("permission-denied", `ckpt.pull of ${store}/${file} by ${ctx.peer}: ${why}`);
      let entry;
      try {
        entry = fragmentEntry(root, store, file);
      } catch {
        // No manifest, or a damaged one: nothing here says who holds the file.
      }
      if (!entry) throw deny("no committed manifest here names that fragment");
      if (!entry.holders.includes(ctx.peer)) {
        throw deny(`its manifest names ${entry.holders.join(", ")} as holders, not the caller`);
      }
      if (args.to !== addressOf(entry.m, ctx.peer)) {
        throw deny(`pushes go only to the caller's own address in the manifest`);
      }
      if (!wholeHere(path, entry.f.bytes)) {
        throw new RpcError("failed", `${store}/${file}: no whole copy here to push`);
      }
      return pushStoreFile(connect, path, {
        store,
        file,
        to: String(args.to),
        offset: typeof args.offset === "number" ? args.offset : 0,
        repair: true,
      });
    },
    "ckpt.have": async (args, ctx: RpcContext) => {
      const r = await have(args, ctx) as {
        sizes: Record<string, number>;
        partial: Record<string, number>;
      };
      if (ctx.role !== "agent") return r;
      const store = String(args.store);
      for (const f of [...Object.keys(r.sizes), ...Object.keys(r.partial)]) {
        if (!namesHolder(root, store, f, ctx.peer)) {
          throw new RpcError(
            "permission-denied",
            `ckpt.have of ${store}/${f} by ${ctx.peer}: its manifest here does not name the caller a holder`,
          );
        }
      }
      return r;
    },
  };
}
