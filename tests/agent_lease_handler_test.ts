/**
 * The agent's side of the coordinator's heartbeats (`agent.lease`): a renewal counts only once the
 * next heartbeat echoes it, from when the agent received the heartbeat that began it, so it starts
 * before the coordinator's grant; a renewal the agent never began, an older coordinator's term and
 * bad terms extend nothing.
 */
import { join } from "node:path";
import { assert, assertEquals, assertRejects } from "./helpers/assert.ts";
import { AgentLease, type LeaseReply } from "../src/agent/lease_handler.ts";
import { validated } from "../src/agent/schemas.ts";
import { bootTimeMs } from "../src/ffi/libc.ts";
import { RpcError } from "../src/rpc/errors.ts";
import { within } from "../src/rpc/deadline.ts";
import { LEASE_FILE } from "../src/vmm_process/fence.ts";
import type { RpcContext } from "../src/rpc/dispatcher.ts";

const TERMS = { ttlMs: 4000, drift: 0.05, fenceMs: 1000 };

function setup() {
  const dir = Deno.makeTempDirSync({ prefix: "dcres-lease-" });
  const h = validated(new AgentLease(dir).handlers())["agent.lease"];
  const call = (args: Record<string, unknown>) =>
    h({ term: 1, epoch: 1, terms: TERMS, ...args }, {} as RpcContext) as Promise<LeaseReply>;
  const lease = () => {
    try {
      return JSON.parse(Deno.readTextFileSync(join(dir, LEASE_FILE)));
    } catch {
      return undefined;
    }
  };
  return { call, lease };
}

Deno.test("a renewal counts once the next heartbeat grants it, from when the agent received the heartbeat that began it", async () => {
  const { call, lease } = setup();
  const before = bootTimeMs();
  const first = await call({});
  const after = bootTimeMs();
  assertEquals(lease(), undefined, "a heartbeat alone leased the host");
  assertEquals(first.heldMs, 0);
  await call({ grant: first.renewal });
  const l = lease();
  assertEquals(l.epoch, 1);
  const span = TERMS.ttlMs * (1 - TERMS.drift);
  assert(l.untilMs >= before + span && l.untilMs <= after + span, JSON.stringify(l));
});

Deno.test("a renewal the agent never began, or one granted twice, extends nothing", async () => {
  const { call, lease } = setup();
  await call({ grant: "f00dbeef" });
  assertEquals(lease(), undefined);
  const a = await call({});
  const b = await call({ grant: a.renewal });
  const once = lease().untilMs;
  await call({ grant: a.renewal });
  assertEquals(lease().untilMs, once, "a renewal granted again extended the lease");
  await call({ grant: b.renewal });
  assert(lease().untilMs > once);
});

Deno.test("a heartbeat of an older term is refused, and a grant of an older epoch is ignored", async () => {
  const { call, lease } = setup();
  const a = await call({ term: 5, epoch: 3 });
  await call({ term: 5, epoch: 3, grant: a.renewal });
  await assertRejects(() => call({ term: 4 }), RpcError, "term 4 is older than term 5");
  const b = await call({ term: 5, epoch: 3 });
  const held = lease().untilMs;
  await call({ term: 5, epoch: 2, grant: b.renewal });
  assertEquals(
    lease(),
    { v: 1, untilMs: held, epoch: 3 },
    "an older epoch's grant extended the lease",
  );
});

Deno.test("lease terms that cannot keep the promise are refused in one line", async () => {
  const { call } = setup();
  await assertRejects(() => call({ terms: { ...TERMS, drift: 0.5 } }), RpcError, "drift");
  await assertRejects(() => call({ terms: { ...TERMS, extra: 1 } }), RpcError, "agent.lease");
});

Deno.test("a VMM that does not answer is named unanswered, and the heartbeat answers in time all the same", async () => {
  const dir = Deno.makeTempDirSync({ prefix: "dcres-lease-" });
  // A control socket whose VMM accepts the connection and never says anything (a hung VMM).
  const stuck = Deno.listen({ transport: "unix", path: join(dir, "stuck.sock") });
  const held: Deno.Conn[] = [];
  const accepting = (async () => {
    for await (const c of stuck) held.push(c);
  })();
  try {
    const h = validated(new AgentLease(dir).handlers())["agent.lease"];
    const t0 = performance.now();
    const r = await within(
      h({ term: 1, epoch: 1, terms: TERMS, vmsWithinMs: 200 }, {} as RpcContext),
      5000,
    ) as LeaseReply | undefined;
    const ms = performance.now() - t0;
    assert(r, "the heartbeat waited on the hung VMM");
    assertEquals(r.vms, []);
    assertEquals(r.unanswered, ["stuck"]);
    assert(ms < 2000, `the heartbeat waited ${ms} ms for a hung VMM`);
    await assertRejects(
      () => h({ term: 1, epoch: 1, terms: TERMS, vmsWithinMs: 5 }, {} as RpcContext),
      RpcError,
      "vmsWithinMs",
    );
  } finally {
    stuck.close();
    held.forEach((c) => c.close());
    await accepting.catch(() => {});
    Deno.removeSync(dir, { recursive: true });
  }
});
