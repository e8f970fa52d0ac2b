/**
 * A one-host VM's checkpoints copied to another host while they are written (issue 15 item 5), on
 * agents of this machine that know each other (`--peers`): by default every checkpoint has 2
 * copies, the manifest names the holder, the copy is the same bytes on disk and its manifest is
 * there; an incremental goes to the same holder, and a holder new to the chain gets it first;
 * `--replicas 1` keeps one copy; more copies than
 * peers is refused in one line; a holder killed mid-checkpoint fails that checkpoint in one line
 * naming it, or lets it complete. After the VM's host dies and loses its data directory, the holder
 * restores the checkpoint itself (eagerly), and has it pushed to a fourth host, which restores it
 * lazily; both guests verify page by page.
 */
import { assert, assertEquals } from "./helpers/assert.ts";
import { TestCluster } from "./helpers/cluster.ts";
import { dcres } from "./helpers/cli.ts";
import type { Manifest } from "../src/ckpt/manifest.ts";

/** A fragment as the manifest JSON lists it. */
type Fragment = Pick<Manifest["fragments"][number], "path" | "host" | "copies">;

Deno.test("a one-host VM's checkpoint has 2 copies by default and restores on another host after its own host lost its disk", async () => {
  const c = new TestCluster(7495);
  const hosts = await c.up(4, { peers: true });
  const [node1] = hosts;
  const a = ["--agent", node1];
  const dir = (n: string) => `${c.env.DCRES_CLUSTER_DIR}/${n}/data/ckpt`;
  try {
    await c.ok([...a, "vm", "start", "--name", "ov", "--mem", "256M", "--ws", "96M"]);
    await c.until(node1, "ov", (v) => (v.memstamp?.written ?? 0) > 20_000, 120_000);
    await c.fails(
      [...a, "checkpoint", "ov", "--replicas", "5"],
      /--replicas 5: only 3 of this host's peers can take a copy/,
    );
    const full = JSON.parse(await c.ok([...a, "--json", "checkpoint", "ov", "--mode", "stop"]));
    const inc = JSON.parse(
      await c.ok([...a, "--json", "checkpoint", "ov", "--mode", "precopy", "--incremental"]),
    );
    assertEquals([full.generation, inc.generation], [1, 2]);
    const info = JSON.parse(await c.ok([...a, "--json", "ckpt", "inspect", inc.checkpoint]));
    const frags = info.fragments as Fragment[];
    assertEquals(frags.length, 2);
    const holder = frags[0].copies?.[0];
    assert(holder && holder !== "node1", JSON.stringify(frags));
    // Both generations went to the same holder, so it holds the whole chain.
    assertEquals(frags.map((f) => [f.host, f.copies]), [["main", [holder]], ["main", [holder]]]);
    // Inspect names the host that took it and where each holder is reached.
    assertEquals(info.host, "node1");
    assertEquals(Object.keys(info.addrs).sort(), [holder, "main"].sort());
    const text = await c.ok([...a, "ckpt", "inspect", inc.checkpoint]);
    assert(text.includes(`by host node1`) && text.includes(`held by main (`), text);
    // Saved paused, the copy is the same bytes; saved while the guest ran (precopy), a page
    // written between its copy and its disk write differs only in a record a later one supersedes.
    for (const f of frags) {
      const mine = Deno.readFileSync(`${dir("node1")}/ov/${f.path}`);
      const copy = Deno.readFileSync(`${dir(holder)}/ov/${f.path}`);
      assertEquals(copy.length, mine.length, `${f.path}: the copy's size`);
      if (f.path.startsWith("g000001/")) {
        assert(
          copy.every((b, i) => b === mine[i]),
          `${f.path}: the copy differs from the original`,
        );
      }
    }
    for (const g of ["g000001", "g000002"]) {
      assert(Deno.statSync(`${dir(holder)}/ov/${g}/MANIFEST`).isFile, `${g}: no manifest there`);
    }
    // A third copy, of an incremental, goes to a host new to this VM: it first gets the chain.
    const inc3 = JSON.parse(
      await c.ok([...a, "--json", "checkpoint", "ov", "--incremental", "--replicas", "3"]),
    );
    const info3 = JSON.parse(await c.ok([...a, "--json", "ckpt", "inspect", inc3.checkpoint]));
    const copies3 = (info3.fragments as Fragment[]).at(-1)!.copies!;
    assertEquals([copies3.length, copies3[0]], [2, holder], JSON.stringify(copies3));
    const third = copies3[1];
    for (const g of ["g000001", "g000002", "g000003"]) {
      for (const f of [`${g}/main.frag`, `${g}/MANIFEST`]) {
        assert(Deno.statSync(`${dir(third)}/ov/${f}`).isFile, `${third} lacks ${f}`);
      }
    }
    // One copy on request: nothing of this store reaches another host.
    const one = JSON.parse(
      await c.ok([...a, "--json", "checkpoint", "ov", "--out", "solo", "--replicas", "1"]),
    );
    const soloInfo = JSON.parse(await c.ok([...a, "--json", "ckpt", "inspect", one.checkpoint]));
    assertEquals((soloInfo.fragments as Fragment[]).map((f) => f.copies), [undefined]);
    for (const n of ["node2", "node3", "node4"]) {
      assert(!existsDir(`${dir(n)}/solo`), `${n} got a copy of a --replicas 1 checkpoint`);
    }
    // The holder killed while a checkpoint streams its copy there (both holders of the chain take
    // one): the checkpoint completes (with the fourth host, when the holder was gone before it
    // began) or fails in one line naming the holder; either way the incremental above restores.
    const holderAddr = hosts[Number(holder.slice(4)) - 1];
    const during = dcres([...a, "checkpoint", "ov", "--mode", "precopy", "--replicas", "3"], {
      env: c.env,
    });
    // Killed once its copy is arriving there (the copy is written aside until it is whole).
    const arriving = `${dir(holder)}/ov/g000004/main.frag.part`;
    let settled = false;
    during.finally(() => settled = true);
    while (!settled && !existsFile(arriving)) await new Promise((r) => setTimeout(r, 10));
    const midWrite = !settled;
    await c.run("kill", holder);
    const killed = await during;
    assert(
      !midWrite && killed.code === 0 ||
        (killed.stderr.includes(holder) || killed.stderr.includes(holderAddr)) &&
          killed.stderr.trim().split("\n").length === 1,
      `${killed.code}: ${killed.stderr}`,
    );
    console.log(
      `  checkpoint with its copy's holder killed: ${
        killed.code === 0 ? "completed" : killed.stderr.trim()
      }`,
    );
    await c.run("start", holder);
    // node1 dies for good.
    await c.run("kill", "node1");
    Deno.removeSync(`${c.env.DCRES_CLUSTER_DIR}/node1/data`, { recursive: true });
    const addrOf = (n: string) => hosts[Number(n.slice(4)) - 1];
    const other = hosts.find((h) => h !== node1 && h !== holderAddr && h !== addrOf(third))!;
    const verified = await c.ok(["--agent", holderAddr, "ckpt", "verify", inc3.checkpoint]);
    assert(verified.startsWith("OK"), verified);
    await c.ok(["--agent", holderAddr, "restore", inc3.checkpoint]);
    const v1 = await c.ok(["--agent", holderAddr, "guest", "verify", "ov"]);
    assert(v1.startsWith("OK"), v1);
    const pushed = JSON.parse(
      await c.ok([
        ...["--agent", holderAddr, "--json", "restore", inc3.checkpoint],
        ...["--single", other, "--lazy", "--name", "ov2"],
      ]),
    );
    assertEquals(pushed.copied.files, 6, JSON.stringify(pushed));
    const v2 = await c.ok(["--agent", other, "guest", "verify", "ov2"]);
    assert(v2.startsWith("OK"), v2);
  } finally {
    await c.down();
  }
});

function existsFile(p: string): boolean {
  try {
    return Deno.statSync(p).isFile;
  } catch {
    return false;
  }
}

function existsDir(p: string): boolean {
  try {
    return Deno.statSync(p).isDirectory;
  } catch {
    return false;
  }
}

Deno.test("with zones labelled, a one-host VM's copy goes to a host in another zone", async () => {
  const c = new TestCluster(7497);
  const [node1] = await c.up(3, { peers: true, zones: ["a", "a", "b"] });
  const a = ["--agent", node1];
  try {
    await c.ok([...a, "vm", "start", "--name", "zv", "--mem", "64M", "--ws", "16M"]);
    const r = JSON.parse(await c.ok([...a, "--json", "checkpoint", "zv", "--mode", "stop"]));
    const info = JSON.parse(await c.ok([...a, "--json", "ckpt", "inspect", r.checkpoint]));
    assertEquals((info.fragments as Fragment[]).map((f) => f.copies), [["node3"]]);
    const two = JSON.parse(
      await c.ok([...a, "--json", "checkpoint", "zv", "--out", "both", "--replicas", "3"]),
    );
    const both = JSON.parse(await c.ok([...a, "--json", "ckpt", "inspect", two.checkpoint]));
    assertEquals((both.fragments as Fragment[]).map((f) => f.copies), [["node3", "node2"]]);
  } finally {
    await c.down();
  }
});
