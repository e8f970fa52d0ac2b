/**
 * The scheduler's decisions (coord/scheduler.ts) against a real SQLite store and a scripted agent,
 * fast: at most PER_HOST checkpoints at once through one host, the most overdue first, also when
 * many fall due together; an incremental the agent cannot build is taken full at once; a hostile
 * reply is a failure, not a catalog entry; the catalog drops what retention removed.
 */
import { join } from "node:path";
import { assert, assertEquals } from "./helpers/assert.ts";
import { SqliteState } from "../src/coord/sqlite_state.ts";
import { PER_HOST, ScheduleCounters, Scheduler } from "../src/coord/scheduler.ts";
import type { Dial } from "../src/coord/host_watch.ts";
import type { Policy } from "../src/coord/state.ts";
import { RpcError } from "../src/rpc/errors.ts";

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const HOST = "127.0.0.9:7400";

/** A scripted agent: answers each checkpoint call with `answer`, counting calls under way. */
class FakeAgent {
  calls: Record<string, unknown>[] = [];
  running = 0;
  most = 0;
  generation = new Map<string, number>();
  answer: (args: Record<string, unknown>, gen: number) => unknown = (args, gen) => ({
    id: crypto.randomUUID().replaceAll("-", ""),
    generation: gen,
    parent: args.incremental ? gen - 1 : null,
  });
  dial: Dial = () =>
    Promise.resolve({
      call: async (_m: string, args: Record<string, unknown>) => {
        this.calls.push(args);
        this.running++;
        this.most = Math.max(this.most, this.running);
        try {
          await sleep(150);
          const vm = String(args.name);
          const gen = (this.generation.get(vm) ?? 0) + 1;
          const r = this.answer(args, gen);
          this.generation.set(vm, gen);
          return r;
        } finally {
          this.running--;
        }
      },
      close: () => Promise.resolve(),
    } as unknown as Awaited<ReturnType<Dial>>);
}

async function withScheduler(
  policies: Policy[],
  agent: FakeAgent,
  ms: number,
  placed: { subs: string[]; up: (host: string) => boolean } = { subs: [], up: () => true },
): Promise<{ state: SqliteState; counters: ScheduleCounters }> {
  const dir = Deno.makeTempDirSync({ prefix: "dcres-sched-" });
  const state = new SqliteState(join(dir, "coord.db"));
  await state.campaign("t", 5000);
  for (const p of policies) {
    await state.commit([
      { op: "put", kind: "policy", value: p },
      { op: "put", kind: "placement", value: { vm: p.vm, main: HOST, subs: placed.subs } },
    ]);
  }
  const counters = new ScheduleCounters();
  const stop = new AbortController();
  const run = new Scheduler(state, agent.dial, placed.up, counters).run([], stop.signal);
  await sleep(ms);
  stop.abort();
  await run;
  return { state, counters };
}

const policy = (vm: string, o: Partial<Policy> = {}): Policy => ({
  vm,
  everyMs: 1000,
  mode: "cow",
  incremental: false,
  fullEvery: 0,
  keep: 10,
  replicas: 1,
  ...o,
});

Deno.test("at most PER_HOST checkpoints run at once through one host, however many are due", async () => {
  const agent = new FakeAgent();
  const vms = Array.from({ length: 8 }, (_, i) => policy(`vm${i}`));
  const { state, counters } = await withScheduler(vms, agent, 2500);
  try {
    assertEquals(agent.most, PER_HOST, `${agent.most} at once`);
    assert([...counters.taken.values()].reduce((a, b) => a + b, 0) >= 8, "too few taken");
    assertEquals((await state.list("checkpoint")).length, agent.calls.length);
  } finally {
    await state.close();
  }
});

Deno.test("a split VM with a sub-host that is not up is not checkpointed; once every host is up it is", async () => {
  const sub = "10.0.0.9:7000";
  let subUp = false;
  const agent = new FakeAgent();
  const { state } = await withScheduler([policy("sv")], agent, 2500, {
    subs: [sub],
    up: (h) => h !== sub || subUp,
  });
  try {
    assertEquals(agent.calls, [], "a checkpoint was asked for while a sub-host was down");
  } finally {
    await state.close();
  }
  subUp = true;
  const again = await withScheduler([policy("sv")], agent, 2500, {
    subs: [sub],
    up: (h) => h !== sub || subUp,
  });
  await again.state.close();
  assert(agent.calls.length >= 1, "no checkpoint once every host was up");
});

Deno.test("an incremental the agent cannot build is retaken full at once; a hostile reply is a failure", async () => {
  const agent = new FakeAgent();
  const normal = agent.answer;
  agent.answer = (args, gen) => {
    if (args.name === "bad") return { id: "../../etc", generation: gen, parent: null };
    if (args.incremental && gen === 2) {
      throw new RpcError(
        "failed",
        "--incremental: generation 1 in /x is not the checkpoint this VM's dirty log counts from; take a full checkpoint first",
      );
    }
    if (args.name === "busy") {
      throw new RpcError("busy", "a checkpoint of busy is already in progress");
    }
    return normal(args, gen);
  };
  const { state, counters } = await withScheduler(
    [policy("inc", { incremental: true, fullEvery: 0 }), policy("bad"), policy("busy")],
    agent,
    3500,
  );
  try {
    const inc = agent.calls.filter((c) => c.name === "inc").map((c) => c.incremental);
    assertEquals(inc.slice(0, 3), [false, true, false], "not retaken full after the refusal");
    assertEquals(
      (await state.list("checkpoint", "bad")).length,
      0,
      "a hostile reply was catalogued",
    );
    assert((counters.failed.get("bad") ?? 0) >= 1);
    assertEquals(counters.failed.get("busy"), undefined, "busy counted as a failure");
    const events = await state.events();
    const skips = events.filter((e) => e.kind === "checkpoint-skipped").map((e) => e.timeMs);
    assertEquals(counters.skipped.get("busy"), skips.length);
    for (let i = 1; i < skips.length; i++) {
      assert(skips[i] - skips[i - 1] >= 1000, `busy retried ${skips[i] - skips[i - 1]} ms later`);
    }
    assert(events.some((e) => e.kind === "checkpoint-failed" && e.vm === "bad"));
    assert(events.some((e) => e.kind === "checkpoint-skipped" && e.vm === "busy"));
  } finally {
    await state.close();
  }
});

Deno.test("the catalog drops the generations the agent's retention removed", async () => {
  const agent = new FakeAgent();
  const normal = agent.answer;
  agent.answer = (args, gen) => ({
    ...(normal(args, gen) as object),
    retention: { kept: [gen - 1, gen].filter((g) => g > 0), removed: {}, failed: {} },
  });
  const { state } = await withScheduler([policy("r", { everyMs: 1000, keep: 2 })], agent, 4500);
  try {
    const gens = (await state.list("checkpoint", "r")).map((c) => c.value.generation).sort();
    const newest = agent.generation.get("r")!;
    assert(newest >= 3, `only ${newest} taken`);
    assertEquals(gens, [newest - 1, newest]);
  } finally {
    await state.close();
  }
});
