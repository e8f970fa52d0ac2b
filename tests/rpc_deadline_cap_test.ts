/** Deadlines are capped (issue 14 item 4): a call asking for more than the cap gets the cap, and a channel its own. */
import { assert, assertEquals } from "./helpers/assert.ts";
import { Dispatcher } from "../src/rpc/dispatcher.ts";
import { MAX_DEADLINE_MS } from "../src/rpc/deadline.ts";
import { AGENT_CHANNELS } from "../src/agent/access.ts";

const CALLER = { peer: "p", role: "operator", via: "quic" } as const;
const PORT = { progress: () => {}, send: () => Promise.resolve() };
const wait = (_a: unknown, ctx: { signal: AbortSignal }) =>
  new Promise((r) => ctx.signal.addEventListener("abort", r, { once: true }));

Deno.test("a deadline above the cap is cut to it, a channel's to its own cap, and one below stays", async () => {
  const d = new Dispatcher({ slow: wait, chan: wait }, undefined, undefined, {
    maxMs: 50,
    longer: { chan: 200 },
  });
  const time = async (method: string, deadlineMs?: number) => {
    const t = performance.now();
    const o = await d.open({ method, args: {}, deadlineMs }, CALLER, PORT).outcome;
    assert(!o.ok && o.error.code === "deadline-exceeded", JSON.stringify(o));
    return { ms: performance.now() - t, message: o.error.message };
  };
  const slow = await time("slow", 10 * 3600_000);
  assert(slow.ms < 1000, `capped call took ${slow.ms} ms`);
  assertEquals(slow.message, "slow timed out after 50 ms");
  assertEquals((await time("slow")).message, "slow timed out after 50 ms");
  assertEquals((await time("chan", 10 * 3600_000)).message, "chan timed out after 200 ms");
  assertEquals((await time("slow", 20)).message, "slow timed out after 20 ms");
  // The agent's caps: an hour for a call, a day for its page channels and consoles.
  assertEquals(MAX_DEADLINE_MS, 3_600_000);
  assertEquals(AGENT_CHANNELS["pages.channel"], 86_400_000);
});
