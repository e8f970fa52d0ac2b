/**
 * A checkpoint chain's merge (`dcres --agent MAIN ckpt merge ID`, run in-process): squashes a checkpoint's chain on every host that holds part of
 * it, at once and locally (each host writes one new fragment from its own fragments, nothing crosses
 * the network but the manifest); the merged manifest is committed on every host once every part is
 * written, so a restore never reads a long chain.
 */
import { checkPlan } from "../agent/plan_reply.ts";
import { decodeManifest, type Manifest } from "../ckpt/manifest.ts";
import { gather, piecesOf } from "../net/chunks.ts";
import { mergeOnHosts } from "../paging/split_merge.ts";
import { reportedGeneration } from "../ckpt/store.ts";
import type { MergePart } from "../ckpt/merge.ts";
import { newCheckpointId } from "../ckpt/transaction.ts";
import { generationName } from "../ckpt/store.ts";
import type { AgentCalls } from "./agent_calls.ts";

/** What a merge did. */
export interface SplitMergeReport {
  /** The store (a VM's name) it merged in. */
  store: string;
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

/** Calls `method` on agent `addr`, uploading `upload` or collecting DATA frames. */
async function stream(
  calls: AgentCalls,
  addr: string,
  method: string,
  args: Record<string, unknown>,
  upload?: Uint8Array,
): Promise<Uint8Array> {
  const parts: Uint8Array[] = [];
  await calls.call(addr, method, args, {
    onData: (b) => parts.push(b.slice()),
    upload: upload && piecesOf(upload),
  });
  return await gather(parts);
}

/** Merges the chain of `path` (found through agent `source`) on every host holding part of it. */
export async function mergeSplit(
  calls: AgentCalls,
  source: string,
  path: string,
): Promise<SplitMergeReport> {
  const t0 = performance.now();
  const plan = checkPlan(source, await calls.call<unknown>(source, "ckpt.plan", { path }));
  if (!plan.inStore) throw new Error(`${path} is outside the agent's checkpoint store`);
  const src: Manifest = decodeManifest(
    `${plan.store}/${plan.generation}/MANIFEST`,
    await stream(calls, source, "ckpt.get", {
      store: plan.store,
      file: `${plan.generation}/MANIFEST`,
    }),
  );
  const hosts = src.split?.hosts ?? { main: "main" };
  const addrOf = (h: string) => hosts[h] === "main" || hosts[h] === undefined ? source : hosts[h];
  const others = [
    ...new Set(src.fragments.flatMap((f) => [f.host, ...(f.copies ?? [])].map(addrOf))),
  ].filter((a) => a !== source);
  const newest = await Promise.all(
    others.map(async (a) =>
      reportedGeneration(
        a,
        await calls.call(a, "ckpt.newest", { store: plan.store }),
      )
    ),
  );
  const generation = Math.max(plan.next - 1, ...newest) + 1;
  const genName = generationName(generation);
  const { id } = newCheckpointId();
  const last = src.fragments.map((f) => f.host).find((h) => addrOf(h) === source) ?? "main";
  const merged = await mergeOnHosts(src, generation, id, last, {
    part: (h, on) =>
      calls.call<MergePart>(addrOf(on), "ckpt.merge.part", {
        store: plan.store,
        generation: plan.generation,
        newGeneration: generation,
        id,
        host: h,
      }),
    commit: async (h, bytes) => {
      await stream(
        calls,
        addrOf(h),
        "ckpt.commit",
        { store: plan.store, generation: genName },
        bytes,
      );
    },
    abort: async (h) => {
      await calls.call(addrOf(h), "ckpt.abort", {
        store: plan.store,
        generation: genName,
      });
    },
  });
  return {
    store: plan.store,
    generation,
    id,
    mergedFrom: src.generation,
    pages: Object.fromEntries(merged.fragments.map((f) => [f.host, f.pages])),
    ms: performance.now() - t0,
  };
}
