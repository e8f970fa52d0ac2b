/**
 * Background merging of a split VM's checkpoint chain, run by its main host after a checkpoint:
 * once a chain is MERGE_AFTER generations long, every host squashes its own fragments of it into
 * one new fragment at once, locally (nothing but the manifest crosses the network), and the merged
 * manifest is committed on every host, so a restore never reads a long chain. The merged generation
 * is the same consistency point, so the next incremental builds on it.
 */
import { getLogger } from "@logtape/logtape";
import { basename, dirname } from "node:path";
import { commitManifest, encodeManifest, type Manifest } from "../ckpt/manifest.ts";
import { mergedManifest, mergeHostPart, type MergePart } from "../ckpt/merge.ts";
import { newCheckpointId } from "../ckpt/save.ts";
import { CheckpointStore, generationName } from "../ckpt/store.ts";
import type { SubLink } from "./sub_link.ts";

const log = getLogger(["dcres", "checkpoint"]);

/** A chain this many generations long is merged. */
export const MERGE_AFTER = 4;

/** Generations in `m`'s chain (1 for a full checkpoint). */
export function chainLength(m: Manifest): number {
  return new Set(m.fragments.map((f) => f.generation)).size;
}

/**
 * Merges the chain ending at generation directory `dir` (main's copy, whose manifest is `src`) on
 * main (`self`) and on the sub-hosts `subs`; returns the merged manifest. A failure removes the
 * merged generation wherever it was not committed; the chain stays as it was.
 */
export async function mergeSplitChain(
  dir: string,
  src: Manifest,
  self: string,
  subs: SubLink[],
): Promise<Manifest> {
  const root = dirname(dir), store = basename(root);
  const generation = (new CheckpointStore(root).generations().pop()?.generation ?? 0) + 1;
  const genName = generationName(generation);
  const { id, idBytes } = newCheckpointId();
  const names = [...new Set(src.fragments.map((f) => f.host))];
  const link = (h: string) => subs.find((l) => l.host === h);
  const missing = names.filter((h) => h !== self && !link(h));
  if (missing.length) throw new Error(`hosts ${missing.join(", ")} are not sub-hosts any more`);
  try {
    const parts = await Promise.all(names.map(async (h): Promise<MergePart> => {
      if (h === self) {
        const s = await mergeHostPart(dir, root, self, generation, idBytes);
        return { ...s, path: `${genName}/${self}.frag` };
      }
      return await link(h)!.call<MergePart>("ckpt.merge.part", {
        store,
        generation: basename(dir),
        newGeneration: generation,
        id,
        host: h,
      });
    }));
    const manifest = mergedManifest(src, names, parts, generation, id);
    const bytes = encodeManifest(manifest);
    const upload = async function* () {
      for (let o = 0; o < bytes.length; o += 256 * 1024) yield bytes.subarray(o, o + 256 * 1024);
    };
    await Promise.all(
      names.filter((h) => h !== self).map((h) =>
        link(h)!.call("ckpt.commit", { store, generation: genName }, { upload: upload() })
      ),
    );
    commitManifest(`${root}/${genName}`, manifest);
    log.info("merged the chain of generation {from} into generation {to} on {hosts} hosts", {
      from: src.generation,
      to: generation,
      hosts: names.length,
    });
    return manifest;
  } catch (e) {
    await Promise.all(
      subs.map((l) => l.call("ckpt.abort", { store, generation: genName }).catch(() => {})),
    );
    new CheckpointStore(root).cleanIncomplete();
    throw e;
  }
}
