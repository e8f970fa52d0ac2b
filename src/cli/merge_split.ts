/**
 * `dcres --agent MAIN ckpt merge ID`: squashes a checkpoint's chain on every host that holds part of
 * it, at once and locally (each host writes one new fragment from its own fragments, nothing crosses
 * the network but the manifest); the merged manifest is committed on every host once every part is
 * written, so a restore never reads a long chain.
 */
import type { CheckpointPlan } from "../agent/ckpt_files.ts";
import { decodeManifest, encodeManifest, type Manifest } from "../ckpt/manifest.ts";
import { mergedManifest, type MergePart } from "../ckpt/merge.ts";
import { newCheckpointId } from "../ckpt/save.ts";
import { generationName } from "../ckpt/store.ts";
import { RpcClient } from "../net/quic.ts";
import type { GlobalOptions } from "./context.ts";
import { clientIdentity, remoteCall } from "./remote.ts";

/** What a merge did. */
export interface SplitMergeReport {
  /** The merged generation. */
  generation: number;
  /** Its checkpoint id. */
  id: string;
  /** The generation whose chain it squashed. */
  mergedFrom: number;
  /** Pages each host's new fragment holds. */
  pages: Record<string, number>;
  /** Wall time. */
  ms: number;
}

/** Reads `file` of `store` from agent `addr`. */
async function fetchFile(g: GlobalOptions, addr: string, store: string, file: string) {
  const client = await RpcClient.connect(addr, clientIdentity(g));
  const parts: Uint8Array[] = [];
  try {
    await client.call("ckpt.get", { store, file }, { onData: (b) => parts.push(b.slice()) });
  } finally {
    client.close();
  }
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  parts.reduce((o, p) => (out.set(p, o), o + p.length), 0);
  return out;
}

/** Sends manifest `bytes` to agent `addr` to commit as generation `generation` of `store`. */
async function commitOn(
  g: GlobalOptions,
  addr: string,
  store: string,
  generation: string,
  bytes: Uint8Array,
) {
  const client = await RpcClient.connect(addr, clientIdentity(g));
  try {
    await client.call("ckpt.commit", { store, generation }, {
      upload: (async function* () {
        for (let o = 0; o < bytes.length; o += 256 * 1024) yield bytes.subarray(o, o + 256 * 1024);
      })(),
    });
  } finally {
    client.close();
  }
}

/** Merges the chain of `path` (found through agent `source`) on every host holding part of it. */
export async function mergeSplit(
  g: GlobalOptions,
  source: string,
  path: string,
): Promise<SplitMergeReport> {
  const t0 = performance.now();
  const plan = await remoteCall<CheckpointPlan>({ ...g, agent: source }, "ckpt.plan", { path });
  if (!plan.inStore) throw new Error(`${path} is outside the agent's checkpoint store`);
  const src: Manifest = decodeManifest(
    `${plan.store}/${plan.generation}/MANIFEST`,
    await fetchFile(g, source, plan.store, `${plan.generation}/MANIFEST`),
  );
  const hosts = src.split?.hosts ?? { main: "main" };
  const addrOf = (h: string) => hosts[h] === "main" || hosts[h] === undefined ? source : hosts[h];
  const names = [...new Set(src.fragments.map((f) => f.host))];
  const generation = plan.next;
  const genName = generationName(generation);
  const { id } = newCheckpointId();
  const done: string[] = [];
  try {
    const parts = await Promise.all(names.map(async (h) => {
      const r = await remoteCall<MergePart>({ ...g, agent: addrOf(h) }, "ckpt.merge.part", {
        store: plan.store,
        generation: plan.generation,
        newGeneration: generation,
        id,
        host: h,
      }).catch((e) => {
        throw new Error(`${h} (${addrOf(h)}): ${(e as Error).message}`);
      });
      done.push(h);
      return r;
    }));
    const manifest = mergedManifest(src, names, parts, generation, id);
    const bytes = encodeManifest(manifest);
    // The source agent last: its copy is the one restores and later checkpoints start from.
    const order = names.filter((h) => addrOf(h) !== source);
    await Promise.all(order.map((h) => commitOn(g, addrOf(h), plan.store, genName, bytes)));
    await commitOn(g, source, plan.store, genName, bytes);
    return {
      generation,
      id,
      mergedFrom: src.generation,
      pages: Object.fromEntries(names.map((h, k) => [h, parts[k].pages])),
      ms: performance.now() - t0,
    };
  } catch (e) {
    await Promise.all(names.map((h) =>
      remoteCall({ ...g, agent: addrOf(h) }, "ckpt.abort", {
        store: plan.store,
        generation: genName,
      }).catch(() => {})
    ));
    throw e;
  }
}
