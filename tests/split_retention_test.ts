/**
 * Retention of a split VM's checkpoints (issue 15 item 4), on agents of this machine: 50
 * incremental checkpoints with `--keep 5` and 2 copies of every fragment while the main host merges
 * chains in the background. After each, every host's store is counted: it never holds more than 5
 * generations plus one merge in progress; merged generations keep their 2 copies; every kept
 * generation restores onto another host and verifies page by page. `ckpt merge` on demand merges
 * the copies too and removes what it squashed; `ckpt gc` through a sub-host then keeps 2 on every host, and a sub-host's store quota refuses the next checkpoint in one line
 * before anything is written, the kept checkpoints intact.
 */
import { assert, assertEquals } from "./helpers/assert.ts";
import { TestCluster } from "./helpers/cluster.ts";
import { dcres } from "./helpers/cli.ts";
import type { Manifest } from "../src/ckpt/manifest.ts";
import { CheckpointStore } from "../src/ckpt/store.ts";

const CHECKPOINTS = 50, KEEP = 5;

/** A fragment as the manifest JSON lists it. */
type Fragment = Pick<Manifest["fragments"][number], "path" | "host" | "copies">;

Deno.test("50 incremental checkpoints with --keep 5 and background merges: no store holds more than 5 generations plus one merge, and every kept generation restores and verifies", async () => {
  const c = new TestCluster(7495);
  const hosts = await c.up(4);
  const [main, s1, s2, spare] = hosts;
  const nodes = ["node1", "node2", "node3"];
  const storeOf = (node: string) => `${c.env.DCRES_CLUSTER_DIR}/${node}/data/ckpt/rt`;
  const count = (node: string) => {
    const gens = new CheckpointStore(storeOf(node)).generations();
    return {
      all: gens.length,
      committed: gens.filter((g) => g.committed).map((g) => g.generation),
    };
  };
  try {
    await c.ok([
      ...["--agent", main, "vm", "start", "--main", main, "--sub", `${s1},${s2}`],
      ...["--name", "rt", "--mem", "64M", "--main-mem", "16M", "--ws", "32M"],
    ]);
    await c.until(main, "rt", (v) => (v.paging?.pageOuts ?? 0) > 2_000, 300_000);
    let most = 0, whileMerging = 0, removed = 0;
    for (let i = 0; i < CHECKPOINTS; i++) {
      const r = JSON.parse(
        await c.ok([
          ...["--agent", main, "--json", "checkpoint", "rt", "--replicas", "2"],
          ...["--mode", i % 2 ? "cow" : "precopy", "--keep", String(KEEP)],
          ...(i ? ["--incremental"] : []),
        ]),
      );
      removed += Object.values(r.retention.removed as Record<string, unknown[]>).flat().length;
      assertEquals(r.retention.failed, {}, JSON.stringify(r.retention));
      for (const node of nodes) {
        const n = count(node);
        most = Math.max(most, n.all);
        if (n.all > n.committed.length || n.committed.length > KEEP) whileMerging++;
        assert(
          n.all <= KEEP + 1,
          `after checkpoint ${i + 1}, ${node} holds ${n.all} generations: ${n.committed}`,
        );
      }
    }
    console.log(
      `  store held at most ${most} generations (+1 merge in progress) over ${CHECKPOINTS} checkpoints on ${nodes.length} hosts; ${whileMerging} counts saw a merge under way; ${removed} generation directories removed`,
    );
    // The last merge settles; then every host keeps the same generations, at most 5.
    let kept: number[] = [];
    for (let t = 0; t < 600; t++) {
      const n = nodes.map(count);
      kept = n[0].committed;
      if (n.every((x) => x.all === x.committed.length && x.all <= KEEP)) break;
      await new Promise((r) => setTimeout(r, 100));
    }
    for (const node of nodes) assertEquals(count(node).committed, kept, node);
    assert(kept.length >= 3 && kept.length <= KEEP, `kept ${kept}`);
    assert(kept[kept.length - 1] > CHECKPOINTS, `no merge took a generation: ${kept}`);

    let merged = 0;
    for (const g of kept) {
      const gen = `rt/g${String(g).padStart(6, "0")}`;
      const info = JSON.parse(await c.ok(["--agent", main, "--json", "ckpt", "inspect", gen]));
      if (info.mergedFrom) merged++;
      // Every fragment, merged ones too, is where its manifest says, twice.
      for (const f of info.fragments as Fragment[]) {
        assertEquals(f.copies?.length, 1, `${gen} ${f.path}: ${JSON.stringify(f)}`);
        for (const h of [f.host, ...f.copies!]) {
          const file = `${c.env.DCRES_CLUSTER_DIR}/${h}/data/ckpt/rt/${f.path}`;
          assert(Deno.statSync(file).isFile, `${file}: the copy is missing`);
        }
      }
      await c.ok(["--agent", main, "restore", gen, "--single", spare, "--name", `rt${g}`]);
      const v = await c.ok(["--agent", spare, "guest", "verify", `rt${g}`]);
      assert(v.startsWith("OK"), `${gen}: ${v}`);
      await c.ok(["--agent", spare, "vm", "stop", `rt${g}`]);
    }
    assert(merged >= 1, `no kept generation is a merged one: ${kept}`);
    console.log(
      `  kept generations ${kept.join(", ")} (${merged} merged) each restored and verified`,
    );
    assert((await c.ok(["--agent", main, "guest", "verify", "rt"])).startsWith("OK"));

    // ckpt merge on demand: the copy holders merge their copies too; what it squashed goes.
    const m = JSON.parse(
      await c.ok(["--agent", main, "--json", "ckpt", "merge", "rt", "--keep", String(KEEP)]),
    );
    const mi = JSON.parse(
      await c.ok(["--agent", main, "--json", "ckpt", "inspect", m.id]),
    );
    assertEquals(
      (mi.fragments as Fragment[]).map((f) => [f.host, f.copies]),
      [["node1", ["node2"]], ["node2", ["node3"]], ["node3", ["node1"]]],
    );
    for (const node of nodes) {
      const n = count(node).committed;
      assert(n.includes(m.generation) && !n.includes(m.mergedFrom), `${node}: ${n}`);
    }

    // gc through a sub-host: what 2 generations need stays, on every host.
    const gc = JSON.parse(await c.ok(["--agent", s1, "--json", "ckpt", "gc", "rt", "--keep", "2"]));
    assertEquals(Object.keys(gc[0].removed).sort(), nodes, JSON.stringify(gc));
    const two = count("node1").committed;
    assert(two.length <= 2 && two.includes(m.generation), `after gc: ${two}`);
    for (const node of nodes) assertEquals(count(node).committed, two, node);
    const newest = `rt/g${String(two[two.length - 1]).padStart(6, "0")}`;
    assert((await c.ok(["--agent", main, "ckpt", "verify", newest])).startsWith("OK"));

    // A store quota on node2 (a sub-host) just above what it holds: the next checkpoint is
    // refused in one line naming the host and the numbers, and every kept generation stays.
    await c.ok(["--agent", main, "vm", "stop", "rt"]);
    for (let t = 0; t < 300; t++) {
      const vms = JSON.parse(await c.ok(["--agent", main, "--json", "vm", "ls"])) as unknown[];
      if (vms.length === 0) break;
      await new Promise((r) => setTimeout(r, 100));
    }
    const node2 = `${c.env.DCRES_CLUSTER_DIR}/node2`;
    await c.run("kill", "node2");
    Deno.writeTextFileSync(`${node2}/agent.json`, JSON.stringify({ storeQuotaBytes: 1 << 20 }));
    await c.run("start", "node2");
    await c.ok(["--agent", main, "restore", newest]);
    const refused = await dcres(
      ["--agent", main, "checkpoint", "rt", "--incremental", "--replicas", "2", "--keep", "5"],
      { env: c.env },
    );
    assert(refused.code !== 0, refused.stdout);
    const line = refused.stderr.trim();
    assert(
      line.split("\n").length === 1 && /node2/.test(line) &&
        /would exceed the agent's store quota \(\d+ of 1048576 bytes used\)/.test(line),
      line,
    );
    console.log(`  quota: ${line}`);
    for (const node of nodes) assertEquals(count(node).committed, two, node);
    for (const node of nodes) assertEquals(count(node).all, two.length, `${node}: leftovers`);
    assert((await c.ok(["--agent", main, "guest", "verify", "rt"])).startsWith("OK"));
    await c.ok(["--agent", main, "vm", "stop", "rt"]);
  } finally {
    await c.down();
  }
});
