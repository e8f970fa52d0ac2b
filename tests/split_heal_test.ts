/**
 * A split VM's fragment copies kept whole by the agents themselves (issue 15 items 2 and 3), on
 * agents of this machine: a restore (eager and lazy) and `ckpt verify`, run before any scrub or
 * repair, meet a flipped byte in the copy they read first, set it aside, pull a whole copy from
 * another holder and go on; agents with a background scrub find a flipped byte and a removed copy
 * by themselves and pull them back, and push a host that lost its disk its copies; and a holder
 * refuses `ckpt.pull` to an agent its manifest does not name, and to any address but the caller's
 * own, and tells an agent through `ckpt.have` only what is missing and what it holds.
 */
import { assert, assertEquals, assertRejects } from "./helpers/assert.ts";
import { TestCluster } from "./helpers/cluster.ts";
import { loadIdentity } from "../src/net/identity.ts";
import { RpcClient } from "../src/net/quic.ts";
import { RpcError } from "../src/rpc/errors.ts";

/** Flips one byte in the middle of `file` (page data, well away from the header and index). */
function flip(file: string): void {
  const bytes = Deno.readFileSync(file);
  bytes[Math.floor(bytes.length / 2)] ^= 0x40;
  Deno.writeFileSync(file, bytes);
}

/** Waits (at most 3 min, polling) until `ok()`, and says how long that took. */
async function waitFor(what: string, ok: () => boolean): Promise<void> {
  const t0 = performance.now();
  while (!ok()) {
    assert(performance.now() - t0 < 180_000, `${what} did not happen within 3 min`);
    await new Promise((r) => setTimeout(r, 500));
  }
  console.log(`  ${what}: ${((performance.now() - t0) / 1000).toFixed(1)} s`);
}

/** True when files `a` and `b` hold the same bytes. */
function same(a: string, b: string): boolean {
  try {
    const x = Deno.readFileSync(a), y = Deno.readFileSync(b);
    return x.length === y.length && x.every((v, i) => v === y[i]);
  } catch {
    return false;
  }
}

interface ScrubStatus {
  bytes: number;
  damaged: number;
  setAside: number;
  repaired: number;
}

Deno.test("fragment copies stay whole by themselves: restores and verify take a whole copy, the background scrub and self-repair bring back damaged and lost ones, and ckpt.pull serves holders only", async () => {
  const c = new TestCluster(7497);
  const hosts = await c.up(3);
  const [main, s1, s2] = hosts;
  const dir = c.env.DCRES_CLUSTER_DIR;
  const copy = (node: string, frag: string) => `${dir}/${node}/data/ckpt/hv/g000001/${frag}.frag`;
  const scrubOf = async (a: string) =>
    JSON.parse(await c.ok(["--agent", a, "--json", "status"])).scrub as ScrubStatus;
  try {
    await c.ok([
      ...["--agent", main, "vm", "start", "--main", main, "--sub", `${s1},${s2}`],
      ...["--name", "hv", "--mem", "256M", "--main-mem", "64M", "--ws", "96M"],
    ]);
    await c.until(main, "hv", (v) => (v.paging?.pageOuts ?? 0) > 5_000, 300_000);
    const r = JSON.parse(
      await c.ok([
        "--agent",
        main,
        "--json",
        "checkpoint",
        "hv",
        "--mode",
        "stop",
        "--replicas",
        "2",
      ]),
    );
    await c.ok(["--agent", main, "vm", "stop", "hv"]);
    // Each target's own copy is the one a restore reads first: main's and a sub-host's are damaged.
    flip(copy("node1", "node1"));
    flip(copy("node2", "node2"));
    const eager = JSON.parse(await c.ok(["--agent", main, "--json", "restore", r.checkpoint]));
    assertEquals(eager.copied.files, 0, JSON.stringify(eager));
    assert((await c.ok(["--agent", main, "guest", "verify", "hv"])).startsWith("OK"));
    assert((await c.ok(["--agent", main, "vm", "check", "hv"])).startsWith("OK"));
    for (const n of ["node1", "node2"]) {
      assert(Deno.statSync(`${copy(n, n)}.damaged`).isFile, `${n}: the damaged copy is not aside`);
    }
    assert(same(copy("node1", "node1"), copy("node2", "node1")), "main's copy is not whole again");
    assert(same(copy("node2", "node2"), copy("node3", "node2")), "node2's copy is not whole again");
    assertEquals((await scrubOf(main)).repaired, 1);
    // Lazily: main's pages come from its fragment while the guest runs.
    await c.ok(["--agent", main, "vm", "stop", "hv"]);
    flip(copy("node1", "node1"));
    await c.ok(["--agent", main, "restore", "--lazy", r.checkpoint]);
    assert((await c.ok(["--agent", main, "guest", "verify", "hv"])).startsWith("OK"));
    assert(same(copy("node1", "node1"), copy("node2", "node1")), "main's copy is not whole again");
    assertEquals((await scrubOf(main)).setAside, 2);
    // And a sub-host's, read from its fragment as main asks: node2's own copy damaged is replaced
    // from node3's when its lazy load meets the damage.
    await c.ok(["--agent", main, "vm", "stop", "hv"]);
    flip(copy("node2", "node2"));
    await c.ok(["--agent", main, "restore", "--lazy", r.checkpoint]);
    assert((await c.ok(["--agent", main, "guest", "verify", "hv"])).startsWith("OK"));
    await waitFor(
      "node2's copy replaced by its lazy load",
      () => same(copy("node2", "node2"), copy("node3", "node2")),
    );
    assertEquals((await scrubOf(s1)).setAside, 2);
    assert((await c.ok(["--agent", main, "vm", "check", "hv"])).startsWith("OK"));
    // ckpt verify on main meets a damaged copy of node3's fragment there, and a whole one comes.
    flip(copy("node1", "node3"));
    const v = JSON.parse(await c.ok(["--agent", main, "--json", "ckpt", "verify", r.checkpoint]));
    assertEquals(v.replacedDamaged, ["hv/g000001/node3.frag"], JSON.stringify(v));
    assert(same(copy("node1", "node3"), copy("node3", "node3")));

    // The role rule: node2 may have node1 push only a fragment the manifest says node2 holds, and
    // only to node2's own address; an operator may not ask at all.
    const asNode2 = await RpcClient.connect(main, loadIdentity(`${dir}/node2/identity`));
    const asOperator = await RpcClient.connect(main, loadIdentity(`${dir}/client`));
    try {
      const pull = (cl: RpcClient, file: string, to: string) =>
        cl.call("ckpt.pull", { store: "hv", file: `g000001/${file}.frag`, to });
      const denied = async (p: Promise<unknown>, what: RegExp) => {
        const e = await assertRejects(() => p, RpcError) as RpcError;
        assertEquals(e.code, "permission-denied", e.message);
        assert(what.test(e.message), e.message);
      };
      await denied(pull(asNode2, "node3", s1), /names node3, node1 as holders, not the caller/);
      await denied(pull(asNode2, "node1", s2), /only to the caller's own address/);
      await denied(pull(asOperator, "node1", s1), /role operator/);
      // ckpt.have tells an agent what is missing, and sizes only of what it holds.
      const have = (files: string[]) => asNode2.call("ckpt.have", { store: "hv", files });
      await denied(have(["g000001/node3.frag"]), /does not name the caller a holder/);
      const lost = await have(["g000001/node9.frag", "g000001/node1.frag"]) as {
        missing: string[];
        sizes: Record<string, number>;
      };
      assertEquals(lost.missing, ["g000001/node9.frag"]);
      assertEquals(Object.keys(lost.sizes), ["g000001/node1.frag"]);
    } finally {
      await asNode2.close();
      await asOperator.close();
    }

    // Agents with a background scrub: a flipped byte in node3's copy of node2's fragment, and
    // node1's copy of node3's fragment removed, come back whole without anyone asking.
    c.env.DCRES_CLUSTER_AGENT_FLAGS = "--scrub-rate 64M --scrub-every 1s";
    for (const n of ["node1", "node2", "node3"]) {
      await c.run("kill", n);
      await c.run("start", n);
    }
    flip(copy("node3", "node2"));
    Deno.removeSync(copy("node1", "node3"));
    await waitFor(
      "node3's damaged and node1's lost copy coming back",
      () =>
        same(copy("node3", "node2"), copy("node2", "node2")) &&
        same(copy("node1", "node3"), copy("node3", "node3")),
    );
    assert(Deno.statSync(`${copy("node3", "node2")}.damaged`).isFile);
    const s3 = await scrubOf(s2), s0 = await scrubOf(main);
    assert(
      s3.bytes > 0 && s3.damaged >= 1 && s3.setAside >= 1 && s3.repaired >= 1,
      JSON.stringify(s3),
    );
    assert(s0.repaired >= 1, JSON.stringify(s0));
    console.log(`  node3's scrub: ${JSON.stringify(s3)}; node1's: ${JSON.stringify(s0)}`);
    const verified = await c.ok(["--agent", main, "ckpt", "verify", r.checkpoint]);
    assert(verified.startsWith("OK"), verified);
    // node2 loses its disk for good and starts empty: the other holders notice and push back its
    // copies and the manifest.
    await c.run("kill", "node2");
    Deno.removeSync(`${dir}/node2/data`, { recursive: true });
    await c.run("start", "node2");
    await waitFor(
      "node2's copies coming back",
      () =>
        same(copy("node2", "node1"), copy("node1", "node1")) &&
        same(copy("node2", "node2"), copy("node3", "node2")) &&
        same(
          `${dir}/node2/data/ckpt/hv/g000001/MANIFEST`,
          `${dir}/node1/data/ckpt/hv/g000001/MANIFEST`,
        ),
    );
    assert((await scrubOf(s1)).repaired >= 2, JSON.stringify(await scrubOf(s1)));
    const onNode2 = await c.ok(["--agent", s1, "ckpt", "verify", r.checkpoint]);
    assert(onNode2.startsWith("OK"), onNode2);
  } finally {
    await c.down();
  }
});
