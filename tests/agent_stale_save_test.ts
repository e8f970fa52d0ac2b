/**
 * A sub-host's checkpoint session whose main host died mid-checkpoint (found by the fault-injection
 * suite): when the VM's pages there start afresh (a new start or a migration, `pages.open` with
 * `hold`), are loaded by a restore or are dropped, the session ends, its uncommitted generation is
 * removed and its fragment closed. Before, the session lived on until the VM's next checkpoint
 * there, holding the fragment's disk space even after a merge's start removed its directory.
 */
import { assert, assertEquals } from "./helpers/assert.ts";
import { TestCluster } from "./helpers/cluster.ts";
import { RpcClient } from "../src/net/quic.ts";
import { loadIdentity } from "../src/net/identity.ts";

/** Files under `dir` that process `pid` holds open. */
function openUnder(pid: number, dir: string): string[] {
  const out: string[] = [];
  for (const e of Deno.readDirSync(`/proc/${pid}/fd`)) {
    try {
      const to = Deno.readLinkSync(`/proc/${pid}/fd/${e.name}`);
      if (to.startsWith(dir)) out.push(to);
    } catch {
      // Closed meanwhile.
    }
  }
  return out;
}

Deno.test("a sub-host ends a checkpoint session its VM's main host left when the VM's pages start afresh or are dropped: the uncommitted generation goes and its fragment is closed", async () => {
  const c = new TestCluster(7487);
  const [addr] = await c.up(1);
  const root = c.env.DCRES_CLUSTER_DIR;
  const pid = Number(Deno.readTextFileSync(`${root}/node1/agent.pid`));
  const agent = await RpcClient.connect(addr, loadIdentity(`${root}/node1/identity`));
  const store = `${root}/node1/data/ckpt/t`;
  const vm = { vm: "t", pages: 256 };
  try {
    let n = 0;
    // A main host opens the VM's pages and begins a checkpoint, then is gone without a word.
    const leave = async () => {
      n++;
      await agent.call("pages.open", { ...vm, hold: [[0, 16]] });
      const id = n.toString(16).padStart(32, "0");
      await agent.call("pages.save.begin", { ...vm, id, generation: n });
      const gen = `${store}/g${String(n).padStart(6, "0")}`;
      assert(Deno.statSync(gen).isDirectory);
      assert(openUnder(pid, store).length > 0, "the session's fragment is open");
      return gen;
    };
    // The VM starts afresh here (its pages held from zero again).
    let gen = await leave();
    await agent.call("pages.open", { ...vm, hold: [[0, 16]] });
    assertEquals(openUnder(pid, store), [], "a fresh start closes the stale fragment");
    assert(!exists(gen), `${gen} is left`);
    // The VM's pages are dropped here.
    gen = await leave();
    await agent.call("pages.drop", { vm: "t" });
    assertEquals(openUnder(pid, store), [], "a drop closes the stale fragment");
    assert(!exists(gen), `${gen} is left`);
  } finally {
    agent.close();
    await c.down();
  }
});

function exists(p: string): boolean {
  try {
    Deno.statSync(p);
    return true;
  } catch {
    return false;
  }
}
