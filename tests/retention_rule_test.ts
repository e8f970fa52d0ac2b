/**
 * Retention (issue 15 item 4), without VMs: which generations `--keep N` keeps given incremental
 * chains and merges (a model run of 50 checkpoints), that pruning a store never removes a fragment
 * a kept generation references nor a generation being written, and that one writer's start does
 * not remove another's generation under way.
 */
import { join } from "node:path";
import { assert, assertEquals, assertRejects } from "./helpers/assert.ts";
import { sampleManifest } from "./helpers/fuzz_targets.ts";
import { commitManifest, type Manifest } from "../src/ckpt/manifest.ts";
import {
  type GenerationView,
  keptGenerations,
  pruneStore,
  retainStore,
} from "../src/ckpt/retention.ts";
import { CheckpointStore, generationName, holdGeneration } from "../src/ckpt/store.ts";
import { MERGE_AFTER } from "../src/paging/split_merge.ts";
import { retentionHandlers } from "../src/agent/retention.ts";
import type { RpcContext } from "../src/rpc/dispatcher.ts";
import { RpcError } from "../src/rpc/errors.ts";

/** A model store: views of its committed generations, and how checkpoints and merges add to it. */
class ModelStore {
  views: GenerationView[] = [];
  #next = 1;

  /** An incremental checkpoint on the newest generation (a full one when there is none). */
  checkpoint(): GenerationView {
    const parent = this.views.at(-1);
    const g = this.#next++;
    const v = { generation: g, point: `p${g}`, refs: [...(parent?.refs ?? []), g] };
    this.views.push(v);
    return v;
  }

  /** Merges the newest generation's chain: a new full generation of the same point. */
  merge(): GenerationView {
    const src = this.views.at(-1)!;
    const g = this.#next++;
    const v = { generation: g, point: src.point, refs: [g] };
    this.views.push(v);
    return v;
  }

  /** Applies `keep`; returns the kept set. */
  retain(keep?: number): Set<number> {
    const kept = keptGenerations(this.views, keep);
    this.views = this.views.filter((v) => kept.has(v.generation));
    return kept;
  }
}

/** Every kept generation's chain is kept: it restores. */
function assertRestorable(kept: Set<number>, views: GenerationView[]) {
  for (const v of views) {
    for (const r of v.refs) assert(kept.has(r), `kept ${v.generation} needs ${r}, which went`);
  }
}

Deno.test("--keep 5 over 50 incremental checkpoints with background merges holds at most 5 generations, each restorable, the newest always among them", () => {
  const s = new ModelStore();
  let most = 0, fewestPoints = Infinity;
  for (let i = 0; i < 50; i++) {
    const newest = s.checkpoint();
    let kept = s.retain(5);
    assert(kept.has(newest.generation), "the newest checkpoint was kept");
    most = Math.max(most, kept.size);
    if (newest.refs.length >= MERGE_AFTER) {
      // The merge writes one more directory while the kept ones stay: 5 + 1 at most.
      assert(kept.size + 1 <= 6, `${kept.size} kept while a merge runs`);
      s.merge();
      kept = s.retain(5);
      assert(!kept.has(newest.generation), "the merged chain's last generation went");
    }
    assertRestorable(kept, s.views);
    if (i >= 5) fewestPoints = Math.min(fewestPoints, new Set(s.views.map((v) => v.point)).size);
  }
  console.log(`  model: at most ${most} generations kept; at least ${fewestPoints} checkpoints`);
  assert(most <= 5, `${most} generations kept`);
  assert(fewestPoints >= 3, `only ${fewestPoints} checkpoints were restorable at one time`);
});

Deno.test("without --keep a merge's source generation goes and every checkpoint stays, and a source a later incremental builds on stays", () => {
  const s = new ModelStore();
  for (let i = 0; i < 4; i++) s.checkpoint();
  s.merge(); // 5 stands for 4
  let kept = s.retain();
  assertEquals([...kept].sort((a, b) => a - b), [1, 2, 3, 5]);
  // A merge of an older chain whose last generation a later incremental builds on.
  const t = new ModelStore();
  t.checkpoint();
  t.checkpoint();
  t.views.push({ generation: 3, point: "p2", refs: [3] }); // merged 2
  t.views.push({ generation: 4, point: "p4", refs: [1, 2, 4] }); // incremental on 2
  kept = t.retain();
  assertEquals([...kept].sort((a, b) => a - b), [1, 2, 3, 4]);
  // --keep 1 keeps the newest point's whole chain, however long.
  assertEquals([...keptGenerations(t.views, 1)].sort((a, b) => a - b), [1, 2, 4]);
});

/** Commits generation `g` of store `root`, referencing fragments of generations `refs`. */
function commitGen(root: string, g: number, refs: number[], point?: string): Manifest {
  const m = sampleManifest();
  const dir = join(root, generationName(g));
  Deno.mkdirSync(dir, { recursive: true });
  m.generation = g;
  m.parent = refs.length > 1 ? refs[refs.length - 2] : null;
  m.id = g.toString(16).padStart(32, "0");
  if (point) m.mergedFromId = point;
  m.fragments = refs.map((r) => ({
    path: `${generationName(r)}/main.frag`,
    host: "main",
    generation: r,
    footerCrc: 0,
    pages: 16,
    bytes: 4096,
  }));
  Deno.writeFileSync(join(dir, "main.frag"), new Uint8Array(4096));
  commitManifest(dir, m);
  return m;
}

const gens = (root: string) => new CheckpointStore(root).generations().map((g) => g.generation);

Deno.test("pruning never removes a generation a kept one references, one newer than the decision, nor one being written", () => {
  const root = Deno.makeTempDirSync({ prefix: "dcres-retain-" });
  try {
    commitGen(root, 1, [1]);
    commitGen(root, 2, [1, 2]);
    commitGen(root, 3, [1, 2, 3]);
    // A host told to keep only 3 still keeps what 3's manifest here references.
    assertEquals(pruneStore(root, [3], 3), []);
    assertEquals(gens(root), [1, 2, 3]);
    // A generation newer than the decision (its commit was not seen there) keeps what it needs.
    commitGen(root, 4, [1, 2, 4]);
    const taken = pruneStore(root, [], 3).map((p) => p.generation);
    assertEquals(taken, [3]);
    Deno.removeSync(join(root, "g000004"), { recursive: true });
    commitGen(root, 3, [1, 2, 3]);
    // Interrupted below the decision: removed; being written (held): left; newer: left.
    Deno.mkdirSync(join(root, "g000004"));
    commitGen(root, 5, [5]);
    Deno.mkdirSync(join(root, "g000006"));
    const release = holdGeneration(join(root, "g000006"));
    Deno.mkdirSync(join(root, "g000007"));
    const removed = pruneStore(root, [5], 6);
    assertEquals(removed.map((p) => [p.generation, p.committed]), [
      [1, true],
      [2, true],
      [3, true],
      [4, false],
    ]);
    assert(removed[0].bytes >= 4096, "bytes removed are counted");
    assertEquals(gens(root), [5, 6, 7]);
    release();
    assertEquals(pruneStore(root, [5], 6).map((p) => p.generation), [6]);
    assertEquals(gens(root), [5, 7]);
  } finally {
    Deno.removeSync(root, { recursive: true });
  }
});

Deno.test("gc of a store keeps every checkpoint and removes only a merge's superseded source", () => {
  const root = Deno.makeTempDirSync({ prefix: "dcres-retain-" });
  try {
    commitGen(root, 1, [1]);
    commitGen(root, 2, [1, 2]);
    const src = commitGen(root, 3, [1, 2, 3]);
    commitGen(root, 4, [4], src.id);
    const r = retainStore(root);
    assertEquals(r.kept, [1, 2, 4]);
    assertEquals(r.removed.map((p) => p.generation), [3]);
    assertEquals(gens(root), [1, 2, 4]);
  } finally {
    Deno.removeSync(root, { recursive: true });
  }
});

Deno.test("a merge or checkpoint starting in a store leaves another writer's generation under way alone, and removes it once abandoned", () => {
  const root = Deno.makeTempDirSync({ prefix: "dcres-retain-" });
  try {
    commitGen(root, 1, [1]);
    const running = new CheckpointStore(root).beginAt(2);
    Deno.writeFileSync(join(running.dir, "main.frag"), new Uint8Array(10));
    // A merge does not start above a checkpoint under way (it would commit above it).
    let refused = "";
    try {
      new CheckpointStore(root).join(3);
    } catch (e) {
      refused = (e as Error).message;
    }
    assert(/g000002 is being written/.test(refused), refused);
    // Another writer starting (a checkpoint into the same store) leaves it alone.
    const other = new CheckpointStore(root).begin();
    assertEquals(other.generation, 3);
    assertEquals(gens(root), [1, 2, 3]);
    assert(
      Deno.statSync(join(running.dir, "main.frag")).isFile,
      "the running checkpoint's fragment",
    );
    other.release();
    running.release();
    // Merge parts of one host join one generation; abandoned ones (held by none) go at the next
    // writer's start.
    const merge = new CheckpointStore(root).join(4);
    const again = new CheckpointStore(root).join(4);
    assertEquals(gens(root), [1, 4]);
    merge.release();
    again.release();
    const next = new CheckpointStore(root).begin();
    assertEquals(next.generation, 2);
    assertEquals(gens(root), [1, 2]);
    next.release();
  } finally {
    Deno.removeSync(root, { recursive: true });
  }
});

Deno.test("ckpt.prune and ckpt.gc take only stores inside the agent's checkpoint root, and gc names the other holders from the manifests", async () => {
  const d = Deno.makeTempDirSync({ prefix: "dcres-retain-" });
  const ctx = {} as RpcContext;
  try {
    const root = join(d, "ckpt"), outside = join(d, "outside");
    Deno.mkdirSync(root);
    commitGen(outside, 1, [1]);
    Deno.symlinkSync(outside, join(root, "link"));
    const h = retentionHandlers(root, "node1");
    for (const store of ["../outside", "link", "a/b"]) {
      const e = await assertRejects(
        async () => await h["ckpt.prune"]({ store, keep: [], upTo: 9 }, ctx),
        RpcError,
      );
      assertEquals((e as RpcError).code, "bad-request", e.message);
    }
    assertEquals(gens(outside), [1], "nothing outside the root was touched");
    const m = commitGen(join(root, "vm"), 1, [1]);
    m.fragments[0] = { ...m.fragments[0], host: "node1", copies: ["node2"] };
    m.split = { mainMemBytes: 0, hosts: { node1: "main", node2: "127.0.0.3:7400" } };
    commitManifest(join(root, "vm", "g000001"), m);
    const r = await h["ckpt.gc"]({ store: "vm", keep: 1 }, ctx) as {
      stores: Array<{ kept: number[]; others: unknown[] }>;
    };
    assertEquals(r.stores[0].kept, [1]);
    assertEquals(r.stores[0].others, [{ host: "node2", addr: "127.0.0.3:7400" }]);
  } finally {
    Deno.removeSync(d, { recursive: true });
  }
});

Deno.test("a holder takes an agent's prune of a one-host VM's copies only from the VM's host, and gc there names the VM's host by its address", async () => {
  const d = Deno.makeTempDirSync({ prefix: "dcres-retain-" });
  const as = (peer: string) => ({ role: "agent", peer } as RpcContext);
  try {
    const root = join(d, "ckpt");
    for (const g of [1, 2]) {
      const m = commitGen(join(root, "vm"), g, [g]);
      m.fragments[0] = { ...m.fragments[0], copies: ["node3"] };
      m.host = "node1";
      m.addrs = { main: "127.0.0.1:7401", node3: "127.0.0.1:7403" };
      commitManifest(join(root, "vm", generationName(g)), m);
    }
    const h = retentionHandlers(root, "node3");
    const e = await assertRejects(
      async () => await h["ckpt.prune"]({ store: "vm", keep: [2], upTo: 2 }, as("node2")),
      RpcError,
    );
    assertEquals((e as RpcError).code, "permission-denied", e.message);
    assert(e.message.includes("node1"), e.message);
    assertEquals(gens(join(root, "vm")), [1, 2], "a peer's prune removed nothing");
    const r = await h["ckpt.prune"]({ store: "vm", keep: [2], upTo: 2 }, as("node1")) as {
      removed: unknown[];
    };
    assertEquals([r.removed.length, gens(join(root, "vm"))], [1, [2]]);
    const gc = await h["ckpt.gc"]({ store: "vm" }, {} as RpcContext) as {
      stores: Array<{ others: unknown[] }>;
    };
    assertEquals(gc.stores[0].others, [{ host: "node1", addr: "127.0.0.1:7401" }]);
  } finally {
    Deno.removeSync(d, { recursive: true });
  }
});
