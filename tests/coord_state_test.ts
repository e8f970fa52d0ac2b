/**
 * The coordinator's state: one contract, run against SQLite and against a real etcd this test
 * starts on loopback. Records round trip with revisions, a stale commit loses, events keep their
 * order, a reopened store continues, one of two candidates leads and the other takes over when it
 * resigns or is killed, and damaged values or a newer schema are refused in one clear line.
 */
import { pollMs } from "../src/coord/election.ts";
import { parseEtcdUrl } from "../src/coord/etcd_client.ts";
import {
  type CoordState,
  NotLeaderError,
  type Policy,
  RecordError,
  StaleRevisionError,
  StateCorruptError,
  StateStoreError,
} from "../src/coord/state.ts";
import { SqliteState } from "../src/coord/sqlite_state.ts";
import { EtcdState } from "../src/coord/etcd_state.ts";
import { testPort } from "./helpers/cluster.ts";
import { assert, assertEquals, assertRejects, assertThrows } from "./helpers/assert.ts";
import { type Backend, BACKENDS, type StoreFixture } from "./helpers/coord_backends.ts";

const POLICY: Policy = {
  vm: "vm1",
  everyMs: 20_000,
  mode: "cow",
  incremental: true,
  fullEvery: 10,
  keep: 5,
  replicas: 2,
};
const TTL_MS = 2000;

/** Runs `body` on a fresh store of `b` with one opened state; closes and removes both. */
function contract(
  b: Backend,
  behaviour: string,
  body: (s: CoordState, f: StoreFixture) => Promise<void>,
): void {
  if (b.skip) console.log(`skipped: ${b.name}: ${behaviour}: ${b.skip}`);
  Deno.test({
    name: `${b.name}: ${behaviour}`,
    ignore: b.skip !== undefined,
    fn: async () => {
      const f = await b.fresh();
      const s = await f.open();
      try {
        await body(s, f);
      } finally {
        await s.close();
        await f.remove();
      }
    },
  });
}

for (const b of BACKENDS) {
  contract(
    b,
    "policies, placements, catalog entries and leases round trip with revisions",
    async (s) => {
      const r1 = await s.commit([{ op: "put", kind: "policy", value: POLICY, expect: 0 }]);
      assertEquals(await s.get("policy", "vm1"), { value: POLICY, rev: r1 });
      const place = {
        vm: "vm1",
        main: "127.0.0.2:7400",
        subs: ["127.0.0.3:7400", "127.0.0.4:7400"],
      };
      const entry = {
        vm: "vm1",
        id: "0123abcd",
        generation: 3,
        timeMs: 1_700_000_000_000,
        hosts: ["127.0.0.2:7400", "127.0.0.3:7400"],
      };
      const other = { ...entry, vm: "vm10", id: "89abcdef" };
      const lease = { host: "127.0.0.2:7400", expiresMs: 1_700_000_005_000, epoch: 7 };
      const r2 = await s.commit([
        { op: "put", kind: "placement", value: place },
        { op: "put", kind: "checkpoint", value: entry },
        { op: "put", kind: "checkpoint", value: other },
        { op: "put", kind: "lease", value: lease },
      ]);
      assert(r2 > r1, `revision ${r2} after ${r1}`);
      assertEquals(await s.get("placement", "vm1"), { value: place, rev: r2 });
      assertEquals(await s.list("checkpoint", "vm1"), [{ value: entry, rev: r2 }]);
      assertEquals((await s.list("checkpoint")).length, 2);
      assertEquals(await s.list("lease"), [{ value: lease, rev: r2 }]);
      assertEquals(await s.revision(), r2);
      const r3 = await s.commit([{ op: "delete", kind: "placement", key: "vm1", expect: r2 }]);
      assertEquals(await s.get("placement", "vm1"), undefined);
      assert(r3 > r2);
    },
  );

  contract(
    b,
    "a commit with a stale revision fails, names the record and changes nothing",
    async (s, f) => {
      const r1 = await s.commit([{ op: "put", kind: "policy", value: POLICY }]);
      const other = await f.open();
      try {
        // Both coordinators read r1 and act on it: exactly one wins.
        const a = { ...POLICY, keep: 7 }, b2 = { ...POLICY, keep: 9 };
        const results = await Promise.allSettled([
          s.commit([{ op: "put", kind: "policy", value: a, expect: r1 }]),
          other.commit([{ op: "put", kind: "policy", value: b2, expect: r1 }]),
        ]);
        assertEquals(results.filter((r) => r.status === "fulfilled").length, 1);
        const lost = results.find((r) => r.status === "rejected") as PromiseRejectedResult;
        assert(lost.reason instanceof StaleRevisionError, String(lost.reason));
        assert(
          /policy vm1 is at revision \d+, not \d+/.test(lost.reason.message),
          lost.reason.message,
        );
        const won = (await s.get("policy", "vm1"))!;
        const before = await s.revision();
        const e = await assertRejects(
          () =>
            s.commit([
              { op: "put", kind: "lease", value: { host: "h1", expiresMs: 1, epoch: 1 } },
              { op: "event", event: { kind: "fenced", timeMs: 1, host: "h1" } },
              { op: "put", kind: "policy", value: POLICY, expect: r1 },
            ]),
          StaleRevisionError,
        );
        assertEquals((e as StaleRevisionError).actual, won.rev);
        await assertRejects(
          () => s.commit([{ op: "put", kind: "policy", value: POLICY, expect: 0 }]),
          StaleRevisionError,
          "not (absent)",
        );
        assertEquals(await s.get("lease", "h1"), undefined);
        assertEquals(await s.events(), []);
        assertEquals(await s.revision(), before);
      } finally {
        await other.close();
      }
    },
  );

  contract(b, "a record that breaks its rules is refused before anything is written", async (s) => {
    await assertRejects(
      () => s.commit([{ op: "put", kind: "policy", value: { ...POLICY, vm: "../x" } }]),
      RecordError,
      "vm",
    );
    await assertRejects(
      () => s.commit([{ op: "put", kind: "policy", value: { ...POLICY, replicas: 0 } }]),
      RecordError,
      "replicas",
    );
    await assertRejects(
      () =>
        s.commit([{
          op: "event",
          event: { kind: "restored", timeMs: 1, detail: "x".repeat(5000) },
        }]),
      RecordError,
      "detail",
    );
    await assertRejects(
      () =>
        s.commit([
          { op: "put", kind: "policy", value: POLICY },
          { op: "delete", kind: "policy", key: "vm1" },
        ]),
      RecordError,
      "twice",
    );
    assertEquals(await s.list("policy"), []);
  });

  contract(
    b,
    "events come back in commit order, the newest when limited, and after a seq",
    async (s) => {
      for (let i = 0; i < 12; i++) {
        await s.commit([{
          op: "event",
          event: { kind: i % 2 ? "host-down" : "restored", timeMs: 1000 - i, vm: `vm${i}` },
        }]);
      }
      const all = await s.events();
      assertEquals(all.map((e) => e.vm), Array.from({ length: 12 }, (_, i) => `vm${i}`));
      assert(all.every((e, i) => i === 0 || e.seq > all[i - 1].seq), "seq rises");
      assertEquals((await s.events({ limit: 3 })).map((e) => e.vm), ["vm9", "vm10", "vm11"]);
      assertEquals((await s.events({ after: all[9].seq })).map((e) => e.vm), ["vm10", "vm11"]);
      await assertRejects(() => s.events({ limit: 0 }), RangeError, "limit");
      const restored = {
        kind: "restored",
        timeMs: 5,
        vm: "vm1",
        host: "127.0.0.3:7400",
        recoveryMs: 1234,
        checkpoint: "0123abcd",
        recoveryPointMs: 3,
        detail: "onto 127.0.0.3:7400",
      };
      await s.commit([{ op: "event", event: restored }]);
      const [last] = await s.events({ limit: 1 });
      assertEquals({ ...last, seq: 0 }, { ...restored, seq: 0 });
    },
  );

  contract(b, "events before a time are pruned and later ones kept", async (s) => {
    for (const timeMs of [5, 1000, 999, 20, 1001]) {
      await s.commit([{ op: "event", event: { kind: "restored", timeMs } }]);
    }
    assertEquals(await s.pruneEvents(1000), 3);
    assertEquals((await s.events()).map((e) => e.timeMs), [1000, 1001]);
    assertEquals(await s.pruneEvents(1000), 0);
  });

  contract(b, "a reopened store continues from what was committed", async (s, f) => {
    const r1 = await s.commit([
      { op: "put", kind: "policy", value: POLICY },
      { op: "event", event: { kind: "policy-set", timeMs: 1, vm: "vm1" } },
    ]);
    await s.close();
    await assertRejects(() => s.campaign("coord-closed", TTL_MS), StateStoreError, "closed");
    await assertRejects(() => s.get("policy", "vm1"), StateStoreError, "closed");
    const again = await f.open();
    try {
      assertEquals(await again.get("policy", "vm1"), { value: POLICY, rev: r1 });
      assertEquals(await again.revision(), r1);
      const r2 = await again.commit([
        { op: "put", kind: "policy", value: { ...POLICY, keep: 6 }, expect: r1 },
        { op: "event", event: { kind: "policy-set", timeMs: 2, vm: "vm1" } },
      ]);
      assert(r2 > r1, `revision ${r2} after ${r1}`);
      const events = await again.events();
      assertEquals(events.map((e) => e.timeMs), [1, 2]);
      assert(events[1].seq > events[0].seq);
    } finally {
      await again.close();
    }
  });

  contract(
    b,
    "two candidates: one leads, and when it resigns the other takes over",
    async (s, f) => {
      const other = await f.open();
      try {
        const first = await s.campaign("coord-a", TTL_MS);
        assert(s.isLeader());
        assertEquals(await s.leader(), { id: "coord-a", term: first.term });
        await assertRejects(
          () => s.campaign("coord-a2", TTL_MS),
          StateStoreError,
          "one campaign at a time",
        );
        const standby = other.campaign("coord-b", TTL_MS, AbortSignal.timeout(20_000));
        await new Promise((r) => setTimeout(r, TTL_MS * 1.5));
        assert(!other.isLeader(), "the standby waits while the leader renews");
        assert(s.isLeader(), "the leader keeps its lease by renewing it");
        await s.commit([{ op: "put", kind: "policy", value: POLICY }], { asLeader: true });
        await assertRejects(
          () => other.commit([{ op: "put", kind: "policy", value: POLICY }], { asLeader: true }),
          NotLeaderError,
        );
        const t0 = performance.now();
        await s.resign();
        assert(first.signal.aborted, "the old leadership's signal aborts");
        const second = await standby;
        console.log(
          `  ${b.name}: takeover after resign in ${Math.round(performance.now() - t0)} ms`,
        );
        assert(second.term > first.term, `term ${second.term} after ${first.term}`);
        assert(other.isLeader() && !s.isLeader());
        assertEquals(await other.leader(), { id: "coord-b", term: second.term });
        await assertRejects(
          () => s.commit([{ op: "put", kind: "policy", value: POLICY }], { asLeader: true }),
          NotLeaderError,
        );
        await other.commit([{ op: "put", kind: "policy", value: POLICY }], { asLeader: true });
      } finally {
        await other.close();
      }
    },
  );

  contract(
    b,
    "a killed leader's lease lapses and the standby takes over within it",
    async (s, f) => {
      const child = new Deno.Command(Deno.execPath(), {
        args: [
          "run",
          "--allow-all",
          new URL("./helpers/coord_candidate.ts", import.meta.url).pathname,
          f.store,
          "coord-killed",
          String(TTL_MS),
        ],
        stdout: "piped",
        stderr: "inherit",
      }).spawn();
      try {
        const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
        const first = (await reader.read()).value ?? "";
        assert(/^leader \d+/.test(first), `the candidate printed ${first}`);
        reader.releaseLock();
        const standby = s.campaign("coord-standby", TTL_MS, AbortSignal.timeout(30_000));
        await new Promise((r) => setTimeout(r, TTL_MS));
        assert(!s.isLeader(), "the standby waits while the other process renews");
        child.kill("SIGKILL");
        const t0 = performance.now();
        const lead = await standby;
        const took = performance.now() - t0;
        console.log(
          `  ${b.name}: takeover after kill -9 in ${Math.round(took)} ms (lease ${TTL_MS} ms)`,
        );
        // The lease lapses at most TTL after the kill and at least TTL after the last renewal,
        // which came about pollMs before it; the standby tries every pollMs; etcd looks for
        // expired leases every 500 ms; a loaded machine adds some.
        assert(
          took >= TTL_MS - pollMs(TTL_MS) - 500,
          `took over before the lease lapsed: ${took} ms`,
        );
        assert(took <= TTL_MS + pollMs(TTL_MS) + 2000, `took ${took} ms`);
        assertEquals((await s.leader())?.id, "coord-standby");
        assert(lead.term > Number(first.split(" ")[1]));
      } finally {
        try {
          child.kill("SIGKILL");
        } catch {
          // already killed
        }
        await child.status;
        await child.stdout.cancel().catch(() => {});
      }
    },
  );

  contract(
    b,
    "a damaged or oversized value in the store gives one clear error naming it",
    async (s, f) => {
      const bad = async (key: string, value: string, includes: string) => {
        await f.putRaw("policy", key, new TextEncoder().encode(value));
        const e = await assertRejects(() => s.get("policy", key), StateCorruptError, includes);
        assertEquals(e.message.split("\n").length, 1);
        await assertRejects(() => s.list("policy"), StateCorruptError);
        await f.putRaw(
          "policy",
          key,
          new TextEncoder().encode(JSON.stringify({ ...POLICY, vm: key })),
        );
      };
      await bad("vm1", "{not json", 'policy "vm1" is not JSON');
      await bad("vm1", JSON.stringify({ ...POLICY, mode: "fast" }), "mode");
      await bad("vm1", JSON.stringify({ ...POLICY, extra: 1 }), "extra");
      await bad("vm1", JSON.stringify(POLICY).padEnd(20_000), "over 16384");
      await bad("vm2", JSON.stringify(POLICY), 'policy "vm2" holds the record of vm1');
      assertEquals((await s.get("policy", "vm2"))?.value.vm, "vm2");
    },
  );

  contract(b, "a store written by a newer dcres is refused, not rewritten", async (s, f) => {
    await s.close();
    await f.setSchema(99);
    await assertRejects(() => f.open(), StateCorruptError, "schema version 99, newer than 2");
  });

  contract(
    b,
    "a store of schema 1 is brought to 2; SQLite's leases take their host's state from its newest state event",
    async (s, f) => {
      const lease = { host: "10.0.0.1:7000", expiresMs: 5, epoch: 2 };
      const at = (kind: string, timeMs: number) => ({
        op: "event" as const,
        event: { kind, timeMs, host: lease.host },
      });
      await s.commit([
        { op: "put", kind: "lease", value: lease },
        at("host-up", 1),
        at("host-down", 2),
        { op: "event", event: { kind: "restored", timeMs: 3, host: lease.host } },
      ]);
      await s.close();
      await f.setSchema(1);
      const again = await f.open();
      try {
        assertEquals(await f.schema(), 2);
        const got = (await again.get("lease", lease.host))?.value;
        // etcd's step only raises the mark: its leases gain a state when next judged.
        assertEquals(got, b.name === "SqliteState" ? { ...lease, state: "down" } : lease);
      } finally {
        await again.close();
      }
    },
  );
}

const etcd = BACKENDS.find((b) => b.name === "EtcdState")!;

contract(
  etcd,
  "a dead endpoint is passed over, and none answering is one clear line",
  async (s, f) => {
    const dead = `127.0.0.201:${testPort(2381)}`;
    const both = await EtcdState.open(`etcd://${dead},${f.store.slice("etcd://".length)}`);
    try {
      await both.commit([{ op: "put", kind: "policy", value: POLICY }]);
      assertEquals((await s.get("policy", "vm1"))?.value, POLICY);
    } finally {
      await both.close();
    }
    const e = await assertRejects(() => EtcdState.open(`etcd://${dead}`), StateStoreError);
    assert(/no etcd endpoint answered .*is etcd running there\?$/.test(e.message), e.message);
    assertEquals(e.message.split("\n").length, 1);
  },
);

contract(
  etcd,
  "a standby keeps campaigning while etcd is down and leads once it is back",
  async (s, f) => {
    await s.commit([{ op: "put", kind: "policy", value: POLICY }]);
    await f.etcd!.kill();
    const standby = s.campaign("coord-patient", TTL_MS, AbortSignal.timeout(30_000));
    await new Promise((r) => setTimeout(r, TTL_MS));
    assert(!s.isLeader());
    await assertRejects(() => s.get("policy", "vm1"), StateStoreError, "no etcd endpoint answered");
    await f.etcd!.restart();
    const lead = await standby;
    assert(s.isLeader() && lead.term > 0);
    assertEquals(
      (await s.get("policy", "vm1"))?.value,
      POLICY,
      "etcd kept the state over its restart",
    );
  },
);

Deno.test("etcd endpoints are HOST:PORT only: no path, user or query", () => {
  assertEquals(parseEtcdUrl("etcd://127.0.0.1:2379,[::1]:2379,etcd-a:2379").length, 3);
  for (
    const bad of [
      "http://127.0.0.1:2379",
      "etcd://127.0.0.1:2379/x",
      "etcd://u@127.0.0.1:2379",
      "etcd://127.0.0.1:2379?q",
      "etcd://127.0.0.1",
      "etcd://",
      "etcd://::1:2379",
    ]
  ) assertThrows(() => parseEtcdUrl(bad), StateStoreError);
});

Deno.test("SqliteState: the state file is created owner-only and kept in WAL mode", async () => {
  const dir = Deno.makeTempDirSync({ prefix: "dcres-coord-" });
  try {
    const s = new SqliteState(`${dir}/coord.db`);
    await s.commit([{ op: "put", kind: "policy", value: POLICY }]);
    assertEquals(Deno.statSync(`${dir}/coord.db`).mode! & 0o777, 0o600);
    assert(Deno.statSync(`${dir}/coord.db-wal`).isFile, "a write-ahead log beside the file");
    await s.close();
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});

Deno.test("SqliteState: a file that is not a state file is refused in one line", () => {
  const dir = Deno.makeTempDirSync({ prefix: "dcres-coord-" });
  try {
    Deno.writeTextFileSync(`${dir}/x.db`, "not a database at all, just text ".repeat(100));
    const e = assertThrows(() => new SqliteState(`${dir}/x.db`), StateCorruptError, "move it away");
    assertEquals(e.message.split("\n").length, 1);
    assertThrows(() => new SqliteState(`${dir}/no/such/dir.db`), StateStoreError, "cannot open");
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});
