/**
 * The coordinator's failure-handling decisions (issue 16 item 3) over a real SQLite store, with the
 * agents' answers scripted (the end-to-end runs are in coord_restore_test.ts): a VM someone already
 * runs on another host that is up is adopted, not restored, and nothing is asked of any agent; a VM
 * with no checkpoint on the survivors is a `restore-failed` event, recorded once per reason and
 * retried; a fenced copy on a host that came back is stopped and recorded as cleaned up; a copy
 * that is merely paused is left alone; a coordinator that lost the leadership writes nothing.
 */
import { assert, assertEquals } from "./helpers/assert.ts";
import type { AgentCalls } from "../src/coord/agent_calls.ts";
import { HostWatch } from "../src/coord/host_watch.ts";
import { Recovery } from "../src/coord/recovery.ts";
import { SqliteState } from "../src/coord/sqlite_state.ts";
import type { LeasedVm } from "../src/agent/lease_handler.ts";

const TERMS = { ttlMs: 5000, drift: 0.01, fenceMs: 1000 };
/** The leadership's signal, never aborted here (a deposed leader is the store's to refuse). */
const LEADS = new AbortController().signal;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Agent calls that answer from `answers` (by method) and note every call. */
function scripted(answers: Record<string, (addr: string) => unknown>) {
  const calls: string[] = [];
  const agents: AgentCalls = {
    call<T>(addr: string, method: string): Promise<T> {
      calls.push(`${addr} ${method}`);
      const a = answers[method];
      if (!a) return Promise.reject(new Error(`${method} is not scripted`));
      try {
        return Promise.resolve(a(addr) as T);
      } catch (e) {
        return Promise.reject(e);
      }
    },
  };
  return { agents, calls };
}

function host(n: number, state: HostWatch["state"], vms: LeasedVm[] = []): HostWatch {
  const h = new HostWatch(`node${n}`, `127.0.0.${n + 1}:7400`, TERMS, 1, performance.now());
  h.state = state;
  h.vms = vms;
  h.certHost = `node${n}`;
  return h;
}

/** Runs `fn` with a fresh store this coordinator leads, closed and removed after. */
async function withStore(fn: (s: SqliteState) => Promise<void>): Promise<void> {
  const dir = Deno.makeTempDirSync({ prefix: "dcres-recovery-" });
  const s = new SqliteState(`${dir}/coord.db`);
  try {
    await s.campaign("coord-a", 5000);
    await fn(s);
  } finally {
    await s.close();
    Deno.removeSync(dir, { recursive: true });
  }
}

const kinds = async (s: SqliteState) => (await s.events()).map((e) => `${e.kind} ${e.vm}`);

Deno.test("a VM run by hand on another host that is up is adopted, not restored", async () => {
  await withStore(async (s) => {
    const [h1, h2, h3] = [
      host(1, "down"),
      host(2, "up", [{ name: "sv", state: "running", split: ["main", "127.0.0.4:7400"] }]),
      host(3, "up"),
    ];
    await s.commit([{
      op: "put",
      kind: "placement",
      value: { vm: "sv", main: h1.addr, subs: [h3.addr] },
    }]);
    const { agents, calls } = scripted({});
    const r = new Recovery(s, agents);
    await r.tick([h1, h2, h3], LEADS);
    await r.settle();
    assertEquals(calls, [], "an adopted VM asks nothing of any agent");
    assertEquals(await kinds(s), ["adopted sv"]);
    assertEquals((await s.get("placement", "sv"))!.value, {
      vm: "sv",
      main: h2.addr,
      subs: [h3.addr],
    });
  });
});

Deno.test("a VM with no checkpoint on the survivors: restore-failed once per reason, retried; its fenced copy stays put", async () => {
  await withStore(async (s) => {
    const fenced: LeasedVm = {
      name: "v1",
      state: "paused",
      pausedReason: "fenced: the host's lease (epoch 1) lapsed 2 s ago",
    };
    const [h1, h2] = [host(1, "down", [fenced]), host(2, "up")];
    await s.commit([{
      op: "put",
      kind: "placement",
      value: { vm: "v1", main: h1.addr, subs: [] },
    }]);
    const { agents, calls } = scripted({ "ckpt.ls": () => [] });
    const r = new Recovery(s, agents);
    for (let i = 0; i < 3; i++) {
      await r.tick([h1, h2], LEADS);
      await r.settle();
      assert(r.busy("v1"), "a failed restore is to be retried");
      await sleep(1100 * 2 ** i);
    }
    assertEquals(calls, [`${h2.addr} ckpt.ls`, `${h2.addr} ckpt.ls`, `${h2.addr} ckpt.ls`]);
    const events = (await s.events()).filter((e) => e.kind === "restore-failed");
    assertEquals(events.length, 1, JSON.stringify(events));
    assert(events[0].detail!.includes("no host that is up holds a committed checkpoint of v1"));
    // Its host comes back with the fenced copy, still placed there: nothing to retry or remove.
    h1.state = "up";
    await r.tick([h1, h2], LEADS);
    await r.settle();
    assert(!r.busy("v1"));
    assertEquals(calls.length, 3);
  });
});

Deno.test("a fenced copy on a host that came back is stopped and recorded; a paused one is left", async () => {
  await withStore(async (s) => {
    const [h1, h2] = [
      host(1, "up", [
        { name: "sv", state: "paused", pausedReason: "fenced: the host's lease lapsed" },
        { name: "v2", state: "paused", pausedReason: "sub-host 127.0.0.9:7400 is unreachable" },
      ]),
      host(2, "up", [{ name: "sv", state: "running" }, { name: "v2", state: "running" }]),
    ];
    await s.commit([
      { op: "put", kind: "placement", value: { vm: "sv", main: h2.addr, subs: [] } },
      { op: "put", kind: "placement", value: { vm: "v2", main: h2.addr, subs: [] } },
    ]);
    const { agents, calls } = scripted({ "vm.stop": () => null });
    const r = new Recovery(s, agents);
    await r.tick([h1, h2], LEADS);
    for (let i = 0; i < 50 && !(await kinds(s)).length; i++) await sleep(20);
    assertEquals(calls, [`${h1.addr} vm.stop`]);
    assertEquals(await kinds(s), ["cleaned-up sv"]);
  });
});

Deno.test("a coordinator that no longer leads neither adopts nor restores", async () => {
  await withStore(async (s) => {
    const [h1, h2] = [host(1, "down"), host(2, "up", [{ name: "sv", state: "running" }])];
    await s.commit([{
      op: "put",
      kind: "placement",
      value: { vm: "sv", main: h1.addr, subs: [] },
    }]);
    await s.resign();
    const { agents } = scripted({});
    const r = new Recovery(s, agents);
    await r.tick([h1, h2], LEADS);
    await r.settle();
    assertEquals(await kinds(s), []);
    assertEquals((await s.get("placement", "sv"))!.value.main, h1.addr);
  });
});
