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
import { newCheckpointId } from "../ckpt/transaction.ts";
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
  /** Host `h` writes one new fragment from its own fragments of the chain. */
  part(h: string): Promise<MergePart>;
  /** Host `h` commits the merged manifest `bytes`. */
  commit(h: string, bytes: Uint8Array): Promise<void>;
  /** Host `h` removes the merged generation unless it committed it. */
  abort(h: string): Promise<void>;
}

/**
 * Merges `src`'s chain into generation `generation` (checkpoint `id`) on every host holding part of
 * it, at once: each writes its part, then the merged manifest is committed on each, `last` (the
 * host whose copy later checkpoints start from) last. A failure removes the merged generation
 * wherever it was not committed; the chain stays as it was.
 */
export async function mergeOnHosts(
  src: Manifest,
  generation: number,
  id: string,
  last: string,
  hosts: MergeHosts,
): Promise<Manifest> {
  const names = [...new Set(src.fragments.map((f) => f.host))];
  try {
    const parts = await Promise.all(names.map((h) =>
      hosts.part(h).catch((e) => {
        throw new Error(`${h}: ${(e as Error).message}`);
      })
    ));
    const manifest = mergedManifest(src, names, parts, generation, id);
    const bytes = encodeManifest(manifest);
    await Promise.all(names.filter((h) => h !== last).map((h) => hosts.commit(h, bytes)));
    await hosts.commit(last, bytes);
    log.info("merged the chain of generation {from} into generation {to} on {hosts} hosts", {
      from: src.generation,
      to: generation,
      hosts: names.length,
    });
    return manifest;
  } catch (e) {
    await Promise.all(names.map((h) =>
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
    part: async (h) =>
      h === self
        ? {
          ...(await mergeHostPart(dir, root, self, generation, idBytes)),
          path: `${genName}/${self}.frag`,
        }
        : await link(h).call<MergePart>("ckpt.merge.part", {
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
      if (h === self) new CheckpointStore(root).cleanIncomplete();
      else await link(h).call("ckpt.abort", { store, generation: genName });
    },
  });
}
