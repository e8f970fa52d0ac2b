/**
 * The check of an agent's `ckpt.plan` answer (`agent/plan_reply.ts`): what the real handler answers
 * over the wire for a one-host checkpoint, a replicated one and an incremental split one passes it
 * unchanged; each way an answer can be bad is refused with one line naming the agent and the field;
 * and the coordinator's merge and restore stop at a bad answer before they call anything else.
 */
import { assert, assertEquals, assertRejects, assertThrows } from "./helpers/assert.ts";
import { manifestFor } from "./helpers/ckpt_fixture.ts";
import { PAGE_SIZE } from "../src/accel/accel.ts";
import { type CheckpointPlan, ckptFileHandlers } from "../src/agent/ckpt_files.ts";
import { checkpointPath } from "../src/agent/paths.ts";
import { BadPlanError, checkPlan, MAX_PLAN_FRAGMENTS } from "../src/agent/plan_reply.ts";
import { commitManifest, type Manifest, MAX_ADDRS, MAX_MEM_SIZE } from "../src/ckpt/manifest.ts";
import { initCa, issueHost } from "../src/cli/ca_admin.ts";
import type { AgentCalls } from "../src/coord/agent_calls.ts";
import { newestCheckpoint, NoCheckpointError } from "../src/coord/restore_source.ts";
import { mergeSplit } from "../src/coord/split_merge.ts";
import { loadIdentity } from "../src/net/identity.ts";
import { RpcClient, RpcServer } from "../src/net/quic.ts";
import { decodeCbor } from "../src/codec/cbor.ts";
import fc from "fast-check";
import { TARGETS } from "./helpers/fuzz_targets.ts";

const AGENT = "127.0.0.3:7400";
const PAGES = 8;

/** A one-host checkpoint of PAGES pages, generation 3, as the fixtures make it. */
function oneHost(): Manifest {
  return manifestFor(PAGES, "g000003/main.frag", 0x1234);
}

/** The same, replicated (1.4): its fragment copied to node2, every holder's address recorded. */
function replicated(): Manifest {
  const m = oneHost();
  m.fragments[0].copies = ["node2"];
  m.fragments[0].bytes = 5 * PAGE_SIZE + 512;
  m.addrs = { main: "127.0.0.2:7400", node2: "[::1]:7401" };
  m.host = "node1";
  return m;
}

/**
 * An incremental checkpoint of a split VM (main node1, sub-hosts node2 and node3, each fragment
 * copied to the next host), generation 3 on generation 2, as a split checkpoint's manifest says it.
 */
function splitChain(): Manifest {
  const m = oneHost();
  const frag = (gen: number, host: string, pages: number, copy: string) => ({
    path: `g00000${gen}/${host}.frag`,
    host,
    generation: gen,
    footerCrc: gen * 7,
    pages,
    bytes: pages * PAGE_SIZE + 256,
    copies: [copy],
  });
  m.fragments = [
    frag(2, "node1", 2, "node2"),
    frag(2, "node2", 2, "node3"),
    frag(3, "node1", 2, "node2"),
    frag(3, "node3", 2, "node1"),
  ];
  m.parent = 2;
  m.pageMap = Uint32Array.of(0, 2, 0, 2, 2, 1, 4, 2, 2, 6, 2, 3);
  m.split = {
    mainMemBytes: 4 * PAGE_SIZE,
    hosts: { node1: "main", node2: "127.0.0.3:7400", node3: "127.0.0.4:7400" },
    mainAddr: "127.0.0.2:7400",
  };
  m.addrs = { node1: "127.0.0.2:7400", node2: "127.0.0.3:7400", node3: "127.0.0.4:7400" };
  m.host = "node1";
  return m;
}

/**
 * The plan of each of `manifests` (committed as generation 3 of store vm1, generation 2 beside it)
 * as the real `ckpt.plan` handler answers an operator over QUIC, the agent named `node1`.
 */
async function realPlans(manifests: Manifest[]): Promise<unknown[]> {
  const d = Deno.makeTempDirSync({ prefix: "dcres-plan-reply-" });
  try {
    await initCa(`${d}/ca`);
    await issueHost({ caDir: `${d}/ca`, host: "node1", ips: ["127.0.0.1"], outDir: `${d}/node1` });
    await issueHost({ caDir: `${d}/ca`, host: "alice", role: "operator", outDir: `${d}/op` });
    const plans: unknown[] = [];
    for (const [k, m] of manifests.entries()) {
      const root = `${d}/ckpt${k}`;
      Deno.mkdirSync(`${root}/vm1/g000002`, { recursive: true });
      Deno.mkdirSync(`${root}/vm1/g000003`);
      commitManifest(`${root}/vm1/g000003`, m);
      const id = loadIdentity(`${d}/node1`);
      const server = new RpcServer(
        id,
        ckptFileHandlers(
          root,
          (p, role) => checkpointPath(root, p, "generation", role),
          (addr) => RpcClient.connect(addr, id),
          undefined,
          "node1",
        ),
        { hostname: "127.0.0.1", port: 0 },
      );
      server.start();
      const c = await RpcClient.connect(`127.0.0.1:${server.addr.port}`, loadIdentity(`${d}/op`));
      try {
        plans.push(await c.call<unknown>("ckpt.plan", { path: "vm1/g000003" }));
      } finally {
        await c.close();
        server.close();
      }
    }
    return plans;
  } finally {
    Deno.removeSync(d, { recursive: true });
  }
}

/** A plan as the real handler makes it for the split chain, without the wire. */
function goodPlan(): CheckpointPlan {
  const m = splitChain();
  return {
    store: "vm1",
    inStore: true,
    generation: "g000003",
    next: 4,
    id: m.id,
    vm: m.vm,
    memSize: PAGES * PAGE_SIZE,
    fragments: m.fragments.map((f) => ({
      path: f.path,
      host: f.host,
      bytes: f.bytes,
      copies: f.copies!,
    })),
    split: structuredClone(m.split!),
    addrs: structuredClone(m.addrs!),
    taker: "node1",
    host: "node1",
  };
}

/** `edit` applied to a good plan is refused, naming the agent and `field` in one line. */
function refused(field: string, edit: (p: Record<string, unknown>) => void): BadPlanError {
  const p = structuredClone(goodPlan()) as unknown as Record<string, unknown>;
  edit(p);
  const e = assertThrows(() => checkPlan(AGENT, p), BadPlanError) as BadPlanError;
  assertEquals(e.name, "BadPlanError");
  assertEquals(e.field, field, e.message);
  assertEquals(e.agent, AGENT);
  assert(e.message.startsWith(`the agent at ${AGENT} answered ckpt.plan with `), e.message);
  assert(e.message.includes(` ${field} `) || e.message.includes(` ${field}:`), e.message);
  assert(e.message.includes("another host that holds the checkpoint"), e.message);
  assert(!e.message.includes("\n") && e.message.length < 400, e.message);
  return e;
}

type Frag = { path: string; host: string; bytes: number; copies?: string[] };
const frags = (p: Record<string, unknown>) => p.fragments as Frag[];
const split = (p: Record<string, unknown>) => p.split as NonNullable<CheckpointPlan["split"]>;

Deno.test("what the real ckpt.plan handler answers over the wire (one-host, replicated, incremental split) passes the check unchanged", async () => {
  const plans = await realPlans([oneHost(), replicated(), splitChain()]);
  for (const plan of plans) assertEquals(checkPlan(AGENT, plan), plan);
  const [one, rep, sp] = plans.map((p) => checkPlan(AGENT, p));
  assertEquals(one.fragments, [{ path: "g000003/main.frag", host: "main", bytes: 0 }]);
  assertEquals([one.next, one.host, one.split, one.taker], [4, "node1", undefined, undefined]);
  assertEquals(rep.fragments[0].copies, ["node2"]);
  assertEquals(rep.addrs, replicated().addrs);
  assertEquals(sp, goodPlan());
});

Deno.test("the plans the fuzz target mutates pass the check before they are mutated", () => {
  const target = TARGETS.find((t) => t.name === "plan-reply")!;
  for (const b of fc.sample(target.valid, 50)) {
    const plan = decodeCbor(b);
    assertEquals(checkPlan(AGENT, plan), plan);
  }
});

Deno.test("a plan's fields it does not know are dropped, the ones it knows kept", () => {
  const p = { ...goodPlan(), future: { x: 1 } };
  assertEquals(checkPlan(AGENT, p), goodPlan());
});

Deno.test("a fragment path that climbs out of the store is refused", () => {
  const e = refused("fragments[2].path", (p) => frags(p)[2].path = "../x");
  assert(e.message.includes(`("../x", not a fragment path`), e.message);
  refused("fragments[0].path", (p) => frags(p)[0].path = "g000002/../../../etc/shadow");
  refused("fragments[1].path", (p) => frags(p)[1].path = "g000002/node2.frag/..");
});

Deno.test("an absolute fragment path is refused", () => {
  refused("fragments[0].path", (p) => frags(p)[0].path = "/etc/shadow");
});

Deno.test("a store that is not a store name is refused", () => {
  refused("store", (p) => p.store = "..");
  refused("store", (p) => p.store = "vm1/../other");
  refused("store", (p) => p.store = "");
});

Deno.test("a generation that is not a generation directory name is refused", () => {
  refused("generation", (p) => p.generation = "g1");
  refused("generation", (p) => p.generation = "../g000003");
  refused("generation", (p) => p.generation = "MANIFEST");
});

Deno.test("negative, fractional or unsafe byte counts are refused", () => {
  const e = refused("fragments[1].bytes", (p) => frags(p)[1].bytes = -1);
  assert(e.message.includes("(-1, "), e.message);
  refused("fragments[1].bytes", (p) => frags(p)[1].bytes = 1.5);
  refused("fragments[1].bytes", (p) => frags(p)[1].bytes = 2 ** 53);
});

Deno.test("guest memory that is not whole pages, or more than the largest guest, is refused", () => {
  refused("memSize", (p) => p.memSize = PAGES * PAGE_SIZE + 1);
  refused("memSize", (p) => p.memSize = -PAGE_SIZE);
  refused("memSize", (p) => p.memSize = MAX_MEM_SIZE + PAGE_SIZE);
  refused("split.mainMemBytes", (p) => split(p).mainMemBytes = 100);
  // The largest guest there is passes.
  assertEquals(checkPlan(AGENT, { ...goodPlan(), memSize: MAX_MEM_SIZE }).memSize, MAX_MEM_SIZE);
});

Deno.test("a next generation below 1 is refused", () => {
  refused("next", (p) => p.next = 0);
});

Deno.test("more fragments than a restore can ask a holder for are refused, before any is looked at", () => {
  const many = (n: number) => (p: Record<string, unknown>) =>
    p.fragments = Array.from({ length: n }, () => frags(p)[0]);
  assertEquals(
    checkPlan(
      AGENT,
      (() => {
        const p = structuredClone(goodPlan()) as unknown as Record<string, unknown>;
        many(MAX_PLAN_FRAGMENTS)(p);
        return p;
      })(),
    ).fragments.length,
    MAX_PLAN_FRAGMENTS,
  );
  const e = refused("fragments", many(MAX_PLAN_FRAGMENTS + 1));
  assert(e.message.includes(`more than ${MAX_PLAN_FRAGMENTS} fragments`), e.message);
  // Junk past the bound is not looked at: the length alone refuses it.
  refused("fragments", (p) => p.fragments = new Array(MAX_PLAN_FRAGMENTS + 1).fill(7));
});

Deno.test("too many copies or addresses, or a host named twice among a fragment's holders, are refused", () => {
  refused(
    "fragments[0].copies",
    (p) => frags(p)[0].copies = Array.from({ length: 16 }, (_, i) => `h${i}`),
  );
  refused("fragments[0].copies", (p) => frags(p)[0].copies = ["node1"]);
  refused("fragments[0].copies", (p) => frags(p)[0].copies = ["node3", "node3"]);
  refused(
    "addrs",
    (p) =>
      p.addrs = Object.fromEntries(
        Array.from({ length: MAX_ADDRS + 1 }, (_, i) => [`h${i}`, "a:1"]),
      ),
  );
});

Deno.test("hosts and addresses of the wrong type or form are refused", () => {
  refused("fragments[0].host", (p) => (frags(p)[0] as Record<string, unknown>).host = 7);
  refused("fragments[0].host", (p) => frags(p)[0].host = "../node1");
  refused("fragments[3].copies[0]", (p) => (frags(p)[3].copies as unknown[])[0] = { h: 1 });
  refused("addrs.node2", (p) => (p.addrs as Record<string, unknown>).node2 = 7400);
  refused("addrs.node2", (p) => (p.addrs as Record<string, unknown>).node2 = "no port");
  refused("addrs key", (p) => (p.addrs as Record<string, unknown>)["../x"] = "a:1");
  refused("split.hosts.node2", (p) => split(p).hosts.node2 = "node2");
  refused("split.mainAddr", (p) => split(p).mainAddr = "/tmp/sock");
  refused("host", (p) => p.host = ["node1"]);
  refused("taker", (p) => p.taker = "");
});

Deno.test("a split that names no main host, or two, is refused", () => {
  refused("split.hosts", (p) => split(p).hosts.node1 = "127.0.0.2:7400");
  refused("split.hosts", (p) => split(p).hosts.node2 = "main");
  refused("split.hosts", (p) => split(p).hosts = {});
});

Deno.test("fields of the wrong type are refused", () => {
  refused("inStore", (p) => p.inStore = "yes");
  refused("next", (p) => p.next = "4");
  refused("memSize", (p) => p.memSize = String(PAGES * PAGE_SIZE));
  refused("fragments", (p) => p.fragments = { 0: frags(p)[0] });
  refused("fragments[1]", (p) => frags(p)[1] = "g000002/node2.frag" as unknown as Frag);
  refused("split", (p) => p.split = "node1");
  refused("addrs", (p) => p.addrs = ["127.0.0.2:7400"]);
  refused("id", (p) => p.id = "not hex");
  refused("vm", (p) => p.vm = "a/b");
  for (const reply of [null, "plan", 7, []]) {
    const e = assertThrows(() => checkPlan(AGENT, reply), BadPlanError) as BadPlanError;
    assertEquals(e.field, "answer", e.message);
  }
});

Deno.test("an answer missing any required field is refused, naming the field", () => {
  for (const f of ["store", "inStore", "generation", "next", "id", "vm", "memSize", "fragments"]) {
    const e = refused(f, (p) => delete p[f]);
    assert(e.message.includes(`with no ${f}:`), e.message);
  }
  for (const f of ["path", "host", "bytes"]) {
    refused(`fragments[1].${f}`, (p) => delete (frags(p)[1] as Record<string, unknown>)[f]);
  }
  refused("split.hosts", (p) => delete (split(p) as Record<string, unknown>).hosts);
  // The optional ones may be left out.
  const bare = structuredClone(goodPlan()) as unknown as Record<string, unknown>;
  for (const f of ["host", "split", "addrs", "taker"]) delete bare[f];
  for (const f of frags(bare)) delete f.copies;
  assertEquals(checkPlan(AGENT, bare), bare as unknown as CheckpointPlan);
});

/**
 * Agent calls that answer `ckpt.ls` with one good generation and `ckpt.plan` with `plan`, or with
 * `plans[addr]` for the agent at `addr` when given.
 */
function fakeCalls(
  plan: unknown,
  called: string[],
  plans: Record<string, unknown> = {},
): AgentCalls {
  return {
    call<T>(addr: string, method: string): Promise<T> {
      called.push(`${addr} ${method}`);
      if (method === "ckpt.ls") {
        return Promise.resolve(
          [{ status: "ok", generation: 3, createdAt: "2025-01-01T00:00:00.000Z" }] as T,
        );
      }
      if (method === "ckpt.plan") return Promise.resolve((plans[addr] ?? plan) as T);
      return Promise.reject(new Error(`${method} should not have been called`));
    },
  };
}

Deno.test("a merge stops at a bad plan before it asks any host for anything else", async () => {
  const bad = { ...goodPlan(), generation: "../../etc" };
  const called: string[] = [];
  const e = await assertRejects(
    () => mergeSplit(fakeCalls(bad, called), AGENT, "vm1"),
    BadPlanError,
    `the agent at ${AGENT} answered ckpt.plan with a bad generation`,
  );
  assertEquals((e as BadPlanError).field, "generation");
  assertEquals(called, [`${AGENT} ckpt.plan`]);
});

Deno.test("the coordinator's restore source refuses a bad plan, and takes the checkpoint from another holder that answers a good one", async () => {
  const bad = { ...goodPlan(), fragments: [{ path: "/etc/shadow", host: "node1", bytes: 1 }] };
  const called: string[] = [];
  const e = await assertRejects(
    () => newestCheckpoint(fakeCalls(bad, called), "vm1", [AGENT]),
    NoCheckpointError,
    "fragments[0].path",
  );
  assert(e.message.includes(`${AGENT}: the agent at ${AGENT} answered ckpt.plan`), e.message);
  assertEquals(called, [`${AGENT} ckpt.ls`, `${AGENT} ckpt.plan`]);
  const other = "127.0.0.9:7400";
  const ok = await newestCheckpoint(
    fakeCalls(goodPlan(), [], { [AGENT]: bad }),
    "vm1",
    [AGENT, other],
  );
  assertEquals(ok.source, other);
  assertEquals(ok.plan, goodPlan());
});
