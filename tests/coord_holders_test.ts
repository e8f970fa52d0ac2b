/**
 * Which copy of each fragment a restore reads (src/coord/holders.ts): a host known to be down is not
 * asked, so the coordinator's restore after a failure does not wait out a connection to it.
 */
import { assertEquals } from "./helpers/assert.ts";
import { chooseHolders } from "../src/coord/holders.ts";
import type { AgentCalls } from "../src/coord/agent_calls.ts";
import type { CheckpointPlan } from "../src/agent/ckpt_files.ts";

const plan: CheckpointPlan = {
  store: "sv",
  inStore: true,
  generation: "g000003",
  next: 4,
  id: "0123456789abcdef0123456789abcdef",
  vm: "sv",
  memSize: 1 << 20,
  fragments: [
    { path: "g000003/node1.frag", host: "node1", bytes: 100, copies: ["node2"] },
    { path: "g000003/node2.frag", host: "node2", bytes: 200, copies: ["node3"] },
  ],
};
const [DEAD, TWO, THREE] = ["127.0.0.2:7400", "127.0.0.3:7400", "127.0.0.4:7400"];

/** What each live agent holds whole; calls to `dead` never end (a lost connection). */
const HOLDS: Record<string, string[]> = {
  [TWO]: ["g000003/node1.frag", "g000003/node2.frag"],
  [THREE]: ["g000003/node2.frag"],
};

function agents(dead: string): { calls: AgentCalls; asked: string[] } {
  const asked: string[] = [];
  const calls: AgentCalls = {
    call<T>(addr: string, _method: string, args: Record<string, unknown>): Promise<T> {
      asked.push(addr);
      if (addr === dead) return new Promise<T>(() => {});
      const held = (args.files as string[]).filter((f) => HOLDS[addr]?.includes(f));
      const sizes = Object.fromEntries(
        held.map((f) => [f, plan.fragments.find((x) => x.path === f)!.bytes]),
      );
      return Promise.resolve({ sizes, partial: {} } as T);
    },
  };
  return { calls, asked };
}

Deno.test("a restore does not ask a host known to be down for its copies, and reads them from the other holders", async () => {
  const { calls, asked } = agents(DEAD);
  const origin = await chooseHolders(
    calls,
    plan,
    [[DEAD, TWO], [TWO, THREE]],
    [THREE, THREE],
    new Set([DEAD]),
  );
  assertEquals(origin, [TWO, THREE]);
  assertEquals(asked.includes(DEAD), false);
});

Deno.test("a fragment whose only whole copy is on a host that is down fails the restore naming it", async () => {
  const { calls } = agents(DEAD);
  const err = await chooseHolders(calls, plan, [[DEAD], [TWO]], [THREE, THREE], new Set([DEAD]))
    .then(() => undefined, (e: Error) => e.message);
  assertEquals(
    err,
    `fragment g000003/node1.frag of checkpoint ${plan.id} has no whole copy on any host that held one (${DEAD}: down); restore an older checkpoint`,
  );
});
