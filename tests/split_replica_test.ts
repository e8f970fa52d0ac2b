/**
 * A split VM's checkpoint with two copies of every fragment (issue 15 items 1 and 2), on agents of
 * this machine: each fragment is copied to the next host round the ring while it is written, the
 * manifest lists the copies, and after a sub-host and then the main host lose their data
 * directories for good (agent killed, directory removed, agent started empty), the checkpoint
 * restores onto the hosts left, from the copies, and the guest verifies page by page; then
 * a replica host killed mid-checkpoint fails that checkpoint in one line or lets it complete;
 * `ckpt repair` puts every copy back on the host the manifest names, and a byte flipped in one
 * copy is found by `ckpt scrub` and replaced from another.
 */
import { assert, assertEquals } from "./helpers/assert.ts";
import { TestCluster } from "./helpers/cluster.ts";
import { dcres } from "./helpers/cli.ts";
import type { Manifest } from "../src/ckpt/manifest.ts";

/** A fragment as the manifest JSON lists it. */
type Fragment = Pick<Manifest["fragments"][number], "path" | "host" | "copies">;

Deno.test("a split VM's checkpoint with 2 copies of every fragment restores from the copies after a sub-host and the main host lost their disks, and repair puts every copy back", async () => {
  const c = new TestCluster(7493);
  const hosts = await c.up(5);
  const [main, s1, s2, s3, spare] = hosts;
  try {
    await c.ok([
      ...["--agent", main, "vm", "start", "--main", main, "--sub", `${s1},${s2},${s3}`],
      ...["--name", "rv", "--mem", "256M", "--main-mem", "64M", "--ws", "96M"],
    ]);
    await c.until(main, "rv", (v) => (v.paging?.pageOuts ?? 0) > 5_000, 300_000);
    await c.fails(
      ["--agent", main, "checkpoint", "rv", "--replicas", "5"],
      /--replicas 5: this VM's checkpoint has 4 hosts/,
    );
    const r = JSON.parse(
      await c.ok([
        ...["--agent", main, "--json", "checkpoint", "rv", "--mode", "precopy", "--replicas", "2"],
      ]),
    );
    const info = JSON.parse(
      await c.ok(["--agent", main, "--json", "ckpt", "inspect", r.checkpoint]),
    );
    const frags = info.fragments as Fragment[];
    // Round the ring: node1 → node2 → node3 → node4 → node1.
    assertEquals(
      frags.map((f) => [f.host, f.copies]),
      [["node1", ["node2"]], ["node2", ["node3"]], ["node3", ["node4"]], ["node4", ["node1"]]],
    );
    for (const f of frags) {
      for (const h of [f.host, ...f.copies!]) {
        const file = `${c.env.DCRES_CLUSTER_DIR}/${h}/data/ckpt/rv/${f.path}`;
        assert(Deno.statSync(file).isFile, `${file}: the copy is missing`);
        assert(
          Deno.statSync(`${c.env.DCRES_CLUSTER_DIR}/${h}/data/ckpt/rv/g000001/MANIFEST`).isFile,
        );
      }
    }
    // A replica host killed while a checkpoint streams copies to it: the checkpoint completes, or
    // fails in one line naming that host; the first checkpoint stays whole either way (below).
    const during = dcres(
      ["--agent", main, "checkpoint", "rv", "--mode", "precopy", "--replicas", "2"],
      { env: c.env },
    );
    await new Promise((r) => setTimeout(r, 300));
    await c.run("kill", "node4");
    const second = await during;
    assert(
      second.code === 0 || /node4|127\.0\.0\.5/.test(second.stderr) &&
          second.stderr.trim().split("\n").length === 1,
      `${second.code}: ${second.stderr}`,
    );
    console.log(
      `  checkpoint with its replica host killed: ${
        second.code === 0 ? "completed" : second.stderr.trim()
      }`,
    );
    await c.run("start", "node4");
    // node3 (a sub-host) and then node1 (main) lose everything.
    for (const node of ["node3", "node1"]) {
      await c.run("kill", node);
      Deno.removeSync(`${c.env.DCRES_CLUSTER_DIR}/${node}/data`, { recursive: true });
      await c.run("start", node);
    }
    // Through a sub-host that kept the manifest: main's part onto the spare host, the sub-hosts'
    // onto node2 and node4, each fragment from a whole copy.
    const out = JSON.parse(
      await c.ok([
        ...["--agent", s1, "--json", "restore", r.checkpoint],
        ...["--main", spare, "--sub", `${s1},${s3}`],
      ]),
    );
    assert(out.copied.files > 0, JSON.stringify(out));
    const verify = await c.ok(["--agent", spare, "guest", "verify", "rv"]);
    assert(verify.startsWith("OK"), verify);
    assert((await c.ok(["--agent", spare, "vm", "check", "rv"])).startsWith("OK"));
    // Repair puts every copy back where the manifest says it is: the two emptied hosts get theirs.
    const rep = JSON.parse(await c.ok(["--agent", s1, "--json", "ckpt", "repair", r.checkpoint]));
    assertEquals([rep.copiesWanted, rep.copiesWhole, rep.failed], [8, 4, []], JSON.stringify(rep));
    assertEquals(
      (rep.repaired as Array<{ file: string; to: string }>).map((x) => `${x.file} ${x.to}`).sort(),
      [
        `g000001/node1.frag ${main}`,
        `g000001/node2.frag ${s2}`,
        `g000001/node3.frag ${s2}`,
        `g000001/node4.frag ${main}`,
      ],
    );
    const again = JSON.parse(
      await c.ok(["--agent", main, "--json", "ckpt", "repair", r.checkpoint]),
    );
    assertEquals([again.copiesWhole, again.repaired.length], [8, 0], JSON.stringify(again));
    const verified = await c.ok(["--agent", main, "ckpt", "verify", r.checkpoint]);
    assert(verified.startsWith("OK"), verified);
    // A byte flipped in node2's copy of main's fragment: the scrub there finds it, sets it aside,
    // and a whole copy from main takes its place.
    const copy = `${c.env.DCRES_CLUSTER_DIR}/node2/data/ckpt/rv/g000001/node1.frag`;
    const bytes = Deno.readFileSync(copy);
    bytes[bytes.length - 40] ^= 0x10;
    Deno.writeFileSync(copy, bytes);
    const scrub = JSON.parse(await c.ok(["--agent", s1, "--json", "ckpt", "scrub"]));
    assertEquals(
      scrub.damaged.map((d: { file: string }) => d.file),
      ["g000001/node1.frag"],
      JSON.stringify(scrub),
    );
    assertEquals(scrub.repairs[0].repaired.map((x: { to: string }) => x.to), [s1]);
    const clean = JSON.parse(await c.ok(["--agent", s1, "--json", "ckpt", "scrub"]));
    assertEquals([clean.files, clean.damaged], [3, []], JSON.stringify(clean));
  } finally {
    await c.down();
  }
});
