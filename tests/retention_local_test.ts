/**
 * Retention of a one-host VM's store through the CLI (issue 15 item 4): `checkpoint --keep 2`
 * (full and incremental in turn) leaves at most two generations after every checkpoint, `ckpt merge`
 * removes the chain's last generation it now stands for, and each kept generation restores and the
 * guest verifies every page.
 */
import { assert, assertEquals } from "./helpers/assert.ts";
import { dcres, tempStateDir } from "./helpers/cli.ts";
import { CheckpointStore } from "../src/ckpt/store.ts";

Deno.test("checkpoint --keep 2 and ckpt merge keep a one-host store to what restores, and every kept generation verifies", async () => {
  const dir = tempStateDir();
  const store = `${dir}/store`;
  const cli = async (...a: string[]) => {
    const r = await dcres(["--state-dir", dir, ...a], { timeoutMs: 120_000 });
    assertEquals(r.code, 0, `dcres ${a.join(" ")}: ${r.stderr}`);
    return r.stdout;
  };
  const gens = () => new CheckpointStore(store).generations();
  try {
    await cli("run", "--detach", "--name", "lr", "--mem", "64M");
    for (let i = 0; i < 6; i++) {
      const r = JSON.parse(
        await cli(
          ...["--json", "checkpoint", "lr", "--out", store, "--mode", "cow", "--keep", "2"],
          ...(i % 2 ? ["--incremental"] : []),
        ),
      );
      const g = gens();
      assert(g.length <= 2, `after checkpoint ${i + 1}: ${g.map((x) => x.generation)}`);
      assert(g.some((x) => x.generation === r.generation), "the new checkpoint stays");
    }
    // The newest is an incremental on a full one: the merge stands for it, and it goes.
    const merged = JSON.parse(await cli("--json", "ckpt", "merge", store, "--keep", "2"));
    const after = gens().map((g) => g.generation);
    assert(after.includes(merged.generation) && after.length <= 2, `after merge: ${after}`);
    assert(!after.includes(merged.mergedFrom), `the merged chain's last stayed: ${after}`);
    await cli("vm", "stop", "lr");
    for (const g of gens()) {
      await cli("restore", g.dir, "--detach", "--name", `lr${g.generation}`);
      const v = await cli("guest", "verify", `lr${g.generation}`);
      assert(v.startsWith("OK"), `${g.dir}: ${v}`);
      await cli("vm", "stop", `lr${g.generation}`);
    }
  } finally {
    await dcres(["--state-dir", dir, "vm", "stop", "lr"]);
    Deno.removeSync(dir, { recursive: true });
  }
});
