/**
 * A one-host VM's copies kept whole and pruned like a split VM's (issue 15 item 5): its manifest
 * records every holder's agent address (1.4 `addrs`), so `dcres ckpt repair` through the VM's host
 * pushes a holder's lost copy back, `--keep N` removes the old generations on the holders too, and
 * `dcres ckpt gc` through the VM's host reaches them; a kept generation restores on the holder and
 * its guest verifies page by page.
 */
import { assert, assertEquals } from "./helpers/assert.ts";
import { TestCluster } from "./helpers/cluster.ts";

Deno.test("a one-host VM's lost copy is repaired through its host, and --keep and gc prune the holders' copies", async () => {
  const c = new TestCluster(7499);
  const hosts = await c.up(3, { peers: true });
  const [node1] = hosts;
  const a = ["--agent", node1];
  const store = (n: string) => `${c.env.DCRES_CLUSTER_DIR}/${n}/data/ckpt/rv`;
  const gens = (n: string) => {
    try {
      return [...Deno.readDirSync(store(n))].filter((e) => /^g\d{6}$/.test(e.name)).length;
    } catch {
      return 0;
    }
  };
  try {
    await c.ok([...a, "vm", "start", "--name", "rv", "--mem", "64M", "--ws", "16M"]);
    await c.until(node1, "rv", (v) => (v.memstamp?.written ?? 0) > 2_000, 60_000);
    const first = JSON.parse(await c.ok([...a, "--json", "checkpoint", "rv", "--mode", "stop"]));
    const info = JSON.parse(await c.ok([...a, "--json", "ckpt", "inspect", first.checkpoint]));
    const holder: string = info.fragments[0].copies?.[0];
    assert(holder && holder !== "node1", JSON.stringify(info.fragments));
    const holderAddr = hosts[Number(holder.slice(4)) - 1];
    // The holder loses its whole store of this VM: repair through the VM's host pushes it back.
    Deno.removeSync(store(holder), { recursive: true });
    const rep = JSON.parse(await c.ok([...a, "--json", "ckpt", "repair", first.checkpoint]));
    assertEquals(
      [rep.copiesWanted, rep.copiesWhole, rep.failed],
      [2, 1, []],
      JSON.stringify(rep),
    );
    assertEquals(
      rep.repaired.map((x: { file: string; to: string }) => `${x.file} ${x.to}`),
      [`g000001/main.frag ${holderAddr}`],
    );
    const verified = await c.ok(["--agent", holderAddr, "ckpt", "verify", first.checkpoint]);
    assert(verified.startsWith("OK"), verified);
    // Four more checkpoints keeping 2: no host keeps more than 2 generations of this VM.
    let last = first;
    for (let i = 0; i < 4; i++) {
      last = JSON.parse(
        await c.ok([...a, "--json", "checkpoint", "rv", "--mode", "stop", "--keep", "2"]),
      );
    }
    const counts = ["node1", "node2", "node3"].map((n) => `${n} ${gens(n)}`);
    console.log(`  generations kept per host with --keep 2: ${counts.join(", ")}`);
    assertEquals(gens("node1"), 2, counts.join(", "));
    assertEquals(gens(holder), 2, counts.join(", "));
    assert(["node2", "node3"].every((n) => gens(n) <= 2), counts.join(", "));
    // gc through the VM's host reaches the holder too.
    const gc = JSON.parse(await c.ok([...a, "--json", "ckpt", "gc", "rv", "--keep", "1"]));
    assertEquals(gc[0].failed, {}, JSON.stringify(gc));
    assertEquals(gc[0].removed[holder]?.length, 1, JSON.stringify(gc));
    assertEquals([gens("node1"), gens(holder)], [1, 1]);
    // The generation kept restores on the holder, and its guest verifies.
    await c.ok([...a, "vm", "stop", "rv"]);
    await c.ok(["--agent", holderAddr, "restore", last.checkpoint]);
    const v = await c.ok(["--agent", holderAddr, "guest", "verify", "rv"]);
    assert(v.startsWith("OK"), v);
  } finally {
    await c.down();
  }
});
