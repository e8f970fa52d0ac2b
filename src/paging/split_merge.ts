/**
 * Background merging of a split VM's checkpoint chain, run by its main host after a checkpoint:
 * once a chain is MERGE_AFTER generations long, every host squashes its own fragments of it into
 * one new fragment at once, locally (nothing but the manifest crosses the network), and the merged
 * manifest is committed on every host, so a restore never reads a long chain. The merged generation
 * is the same consistency point, so the next incremental builds on it.
 */
import { getLogger } from "@logtape/logtape";
import { basename, dirname } from "node:path";
import { commitManifest, decodeManifest, encodeManifest, type Manifest } from "../ckpt/manifest.ts";
import { piecesOf } from "../net/chunks.ts";
import { mergedManifest, mergeHostPart, type MergePart } from "../ckpt/merge.ts";
import { newCheckpointId, removeGeneration } from "../ckpt/transaction.ts";
import { CheckpointStore, generationName, reportedGeneration } from "../ckpt/store.ts";
import type { SubLink } from "./sub_link.ts";

const log = getLogger(["dcres", "checkpoint"]);

/** A chain this many generations long is merged. */
export const MERGE_AFTER = 4;

/** Generations in `m`'s chain (1 for a full checkpoint). */
export function chainLength(m: Manifest): number {
  return new Set(m.fragments.map((f) => f.generation)).size;
}

/** How a split merge reaches each host (by its name in the manifest). */
export interface MergeHosts {
  /**
   * Host `on` writes one new fragment from host `h`'s fragments of the chain: its own (`on` is
   * `h`), or its copies of them.
   */
  part(h: string, on: string): Promise<MergePart>;
  /** Host `h` commits the merged manifest `bytes`. */
  commit(h: string, bytes: Uint8Array): Promise<void>;
  /** Host `h` removes the merged generation unless it committed it. */
  abort(h: string): Promise<void>;
}

/**
 * The hosts holding a copy of every fragment `h` wrote in `src`'s chain: they hold copies of its
 * merged fragment too, each writing its own from its copies.
 */
export function copyHolders(src: Manifest, h: string): string[] {
  const mine = src.fragments.filter((f) => f.host === h);
  return (mine[0]?.copies ?? []).filter((c) => mine.every((f) => f.copies?.includes(c)));
}

/**
 * Merges `src`'s chain into generation `generation` (checkpoint `id`) on every host holding part of
 * it, at once: each writes its part, and each host holding copies of a host's fragments writes the
 * same part from its copies (the writer is deterministic, so the copy must match the original's
 * size and footer checksum, or the merge fails); so the merged generation has as many copies as
 * the chain had. Then the merged manifest is committed on each, `last` (the host whose copy later
 * checkpoints start from) last. A failure removes the merged generation wherever it was not
 * committed; the chain stays as it was.
 */
export async function mergeOnHosts(
  src: Manifest,
  generation: number,
  id: string,
  last: string,
  hosts: MergeHosts,
): Promise<Manifest> {
  const names = [...new Set(src.fragments.map((f) => f.host))];
  const copies = names.map((h) => copyHolders(src, h));
  const all = [...new Set([...names, ...copies.flat()])];
  try {
    const written = await Promise.all(
      names.map((h, k) =>
        Promise.all([h, ...copies[k]].map((on) =>
          hosts.part(h, on).catch((e) => {
            throw new Error(`${on}: ${(e as Error).message}`);
          })
        ))
      ),
    );
    written.forEach(([part, ...others], k) =>
      others.forEach((p, j) => {
        if (p.footerCrc !== part.footerCrc || p.fileBytes !== part.fileBytes) {
          throw new Error(
            `${copies[k][j]}'s merged copy of ${names[k]}'s fragment differs from ${
              names[k]
            }'s (${p.fileBytes} bytes, footer CRC ${p.footerCrc}; ${part.fileBytes}, ${part.footerCrc}); the chain stays as it was (run ckpt scrub)`,
          );
        }
      })
    );
    const parts = written.map(([part]) => part);
    const manifest = mergedManifest(src, names, parts, generation, id, copies);
    const bytes = encodeManifest(manifest);
    await Promise.all(all.filter((h) => h !== last).map((h) => hosts.commit(h, bytes)));
    await hosts.commit(last, bytes);
    log.info("merged the chain of generation {from} into generation {to} on {hosts} hosts", {
      from: src.generation,
      to: generation,
      hosts: all.length,
    });
    return manifest;
  } catch (e) {
    await Promise.all(all.map((h) =>
      hosts.abort(h).catch((a) =>
        // The merge's own failure is what the caller must see; a host not told drops the
        // generation at its next begin.
        log.warn("host {host} could not be told the merge was abandoned: {error}", {
          host: h,
          error: (a as Error).message,
        })
      )
    ));
    throw e;
  }
}

/** The newest generation any of `subs` holds in store `store`. */
export async function newestOnSubs(subs: SubLink[], store: string): Promise<number> {
  const newest = await Promise.all(
    subs.map((l) => l.call<{ generation?: unknown }>("ckpt.newest", { store })),
  );
  return Math.max(0, ...newest.map((r, k) => reportedGeneration(subs[k].host, r)));
}

/**
 * Merges the chain ending at generation directory `dir` (main's copy, whose manifest is `src`) on
 * main (`self`, locally) and on the sub-hosts `subs`; returns the merged manifest.
 */
export async function mergeSplitChain(
  dir: string,
  src: Manifest,
  self: string,
  subs: SubLink[],
): Promise<Manifest> {
  const root = dirname(dir), store = basename(root);
  const here = new CheckpointStore(root).generations().pop()?.generation ?? 0;
  const generation = Math.max(here, await newestOnSubs(subs, store)) + 1;
  const genName = generationName(generation);
  const { id, idBytes } = newCheckpointId();
  const link = (h: string) => {
    const l = subs.find((l) => l.host === h);
    if (!l) throw new Error(`${h} is not a sub-host any more`);
    return l;
  };
  return await mergeOnHosts(src, generation, id, self, {
    part: async (h, on) =>
      on === self
        ? {
          ...(await mergeHostPart(dir, root, h, generation, idBytes)),
          path: `${genName}/${h}.frag`,
        }
        : await link(on).call<MergePart>("ckpt.merge.part", {
          store,
          generation: basename(dir),
          newGeneration: generation,
          id,
          host: h,
        }),
    commit: async (h, bytes) => {
      if (h === self) commitManifest(`${root}/${genName}`, decodeManifest(genName, bytes));
      else {await link(h).call("ckpt.commit", { store, generation: genName }, {
          upload: piecesOf(bytes),
        });}
    },
    abort: async (h) => {
      if (h !== self) await link(h).call("ckpt.abort", { store, generation: genName });
      else if (
        !new CheckpointStore(root).generations().some((g) =>
          g.committed && g.generation === generation
        )
      ) {
        removeGeneration(`${root}/${genName}`);
      }
    },
  });
}
