import { assert, assertEquals, assertRejects } from "./helpers/assert.ts";
import { type Identity, loadIdentity } from "../src/net/identity.ts";
import { initCa, issueHost } from "../src/cli/ca_admin.ts";
import { RpcClient, RpcServer } from "../src/net/quic.ts";
import { helloReply } from "./helpers/raw_hello.ts";
import { RpcError } from "../src/net/rpc_messages.ts";
import { ConfigError } from "../src/rpc/errors.ts";

async function identities() {
  const d = Deno.makeTempDirSync({ prefix: "dcres-quic-" });
  await initCa(`${d}/ca`);
  await issueHost({ caDir: `${d}/ca`, host: "agent1", ips: ["127.0.0.1"], outDir: `${d}/agent` });
  await issueHost({ caDir: `${d}/ca`, host: "cli", outDir: `${d}/cli` });
  await initCa(`${d}/ca2`);
  await issueHost({
    caDir: `${d}/ca2`,
    host: "stranger",
    ips: ["127.0.0.1"],
    outDir: `${d}/stranger`,
  });
  return {
    d,
    agent: loadIdentity(`${d}/agent`),
    cli: loadIdentity(`${d}/cli`),
    stranger: loadIdentity(`${d}/stranger`),
  };
}

Deno.test("over QUIC a cluster client is authenticated, calls methods, gets progress, typed errors and deadlines", async () => {
  const ids = await identities();
  const server = new RpcServer(ids.agent, {
    health: (_a, ctx) => Promise.resolve({ ok: true, peer: ctx.peer }),
    slow: async (_a, ctx) => {
      ctx.progress({ done: 1 });
      await new Promise((r) => setTimeout(r, 300));
      return "late";
    },
    boom: () => Promise.reject(new Error("it broke")),
  }, { hostname: "127.0.0.1", port: 0 });
  server.start();
  const c = await RpcClient.connect(`127.0.0.1:${server.addr.port}`, ids.cli);
  try {
    assertEquals(c.host, "agent1");
    assertEquals(await c.call("health"), { ok: true, peer: "cli" });
    const progress: unknown[] = [];
    assertEquals(await c.call("slow", {}, { onProgress: (p) => progress.push(p) }), "late");
    assertEquals(progress, [{ done: 1 }]);
    const e1 = await assertRejects(() => c.call("nope"), RpcError, `unknown method "nope"`);
    assertEquals((e1 as RpcError).code, "unknown-method");
    assertEquals(
      ((await assertRejects(() => c.call("boom"), RpcError, "it broke")) as RpcError).code,
      "failed",
    );
    assertEquals(
      ((await assertRejects(() => c.call("slow", {}, { deadlineMs: 50 }), RpcError)) as RpcError)
        .code,
      "deadline-exceeded",
    );
    const many = await Promise.all(Array.from({ length: 20 }, () => c.call("health")));
    assertEquals(many.length, 20);
  } finally {
    c.close();
    server.close();
  }
});

Deno.test("over QUIC a cancelled call aborts its handler, and a deadline aborts it too", async () => {
  const ids = await identities();
  const aborted: string[] = [];
  const started = Promise.withResolvers<void>();
  const server = new RpcServer(ids.agent, {
    wait: (a, ctx) =>
      new Promise((_, rej) => {
        started.resolve();
        ctx.signal.addEventListener("abort", () => {
          aborted.push(String(a.tag));
          rej(ctx.signal.reason);
        });
      }),
  }, { hostname: "127.0.0.1", port: 0 });
  server.start();
  const c = await RpcClient.connect(`127.0.0.1:${server.addr.port}`, ids.cli);
  try {
    const stop = new AbortController();
    const call = c.call("wait", { tag: "cancel" }, { signal: stop.signal });
    await started.promise;
    stop.abort();
    assertEquals(((await assertRejects(() => call, RpcError)) as RpcError).code, "cancelled");
    const late = await assertRejects(
      () => c.call("wait", { tag: "deadline" }, { deadlineMs: 100 }),
      RpcError,
    );
    assertEquals((late as RpcError).code, "deadline-exceeded");
    for (let i = 0; i < 50 && aborted.length < 2; i++) await new Promise((r) => setTimeout(r, 20));
    assertEquals(aborted.sort(), ["cancel", "deadline"]);
  } finally {
    c.close();
    server.close();
  }
});

/** A 256 KiB chunk whose bytes say which chunk it is. */
function part(i: number): Uint8Array {
  const b = new Uint8Array(256 << 10);
  for (let j = 0; j < b.length; j += 4096) b[j] = (i * 31 + j / 4096) & 0xff;
  b[b.length - 1] = i;
  return b;
}

async function* parts(from: number, n: number) {
  for (let i = from; i < from + n; i++) yield part(i);
}

Deno.test("over QUIC binary DATA frames flow both ways, and large transfers split over parallel streams arrive intact", async () => {
  const ids = await identities();
  const server = new RpcServer(ids.agent, {
    // Echoes every uploaded chunk reversed, then reports how much it saw.
    echo: async (_a, ctx) => {
      let bytes = 0;
      for await (const b of ctx.data) {
        bytes += b.length;
        await ctx.send(b.slice().reverse());
      }
      return { bytes };
    },
  }, { hostname: "127.0.0.1", port: 0 });
  server.start();
  const c = await RpcClient.connect(`127.0.0.1:${server.addr.port}`, ids.cli);
  try {
    const got = await Promise.all([0, 1, 2, 3].map(async (s) => {
      const back: Uint8Array[] = [];
      const r = await c.call<{ bytes: number }>("echo", {}, {
        upload: parts(s * 8, 8),
        onData: (b) => back.push(b),
      });
      return { r, back, s };
    }));
    for (const { r, back, s } of got) {
      assertEquals(r.bytes, 8 * (256 << 10));
      assertEquals(back.length, 8);
      back.forEach((b, k) => assertEquals(b.reverse(), part(s * 8 + k)));
    }
  } finally {
    c.close();
    server.close();
  }
});

Deno.test("over QUIC a client whose certificate another CA signed, or that has none, is refused before any request", async () => {
  const ids = await identities();
  let calls = 0;
  const server = new RpcServer(ids.agent, { health: () => Promise.resolve(calls++) }, {
    hostname: "127.0.0.1",
    port: 0,
  });
  server.start();
  try {
    const other = { ...ids.stranger, caPem: ids.agent.caPem };
    const e = await assertRejects(
      () => RpcClient.connect(`127.0.0.1:${server.addr.port}`, other),
      RpcError,
    );
    assert(
      e.message.includes("refused us") && e.message.includes("not by the cluster CA"),
      e.message,
    );
    const selfish = { ...ids.cli, certPem: ids.stranger.certPem };
    await assertRejects(
      () => RpcClient.connect(`127.0.0.1:${server.addr.port}`, selfish),
      RpcError,
      "refused us",
    );
    const wrongServer = { ...ids.cli, caPem: ids.stranger.caPem };
    await assertRejects(
      () => RpcClient.connect(`127.0.0.1:${server.addr.port}`, wrongServer),
      RpcError,
      "cannot reach the agent",
    );
    assertEquals(calls, 0);
    assert(server.refused >= 2);
  } finally {
    server.close();
  }
});

Deno.test("over QUIC an expired cluster certificate, and a client that presents none, are refused", async () => {
  const ids = await identities();
  const server = new RpcServer(ids.agent, { health: () => Promise.resolve(1) }, {
    hostname: "127.0.0.1",
    port: 0,
  });
  server.start();
  try {
    await issueHost({
      caDir: `${ids.d}/ca`,
      host: "old",
      outDir: `${ids.d}/old`,
      days: 1,
      validFrom: new Date(Date.now() - 10 * 86_400_000),
    });
    const e = await assertRejects(
      () => RpcClient.connect(`127.0.0.1:${server.addr.port}`, loadIdentity(`${ids.d}/old`)),
      RpcError,
    );
    assert(e.message.includes("expired"), e.message);

    // A raw client whose hello carries no certificate at all, and one of the old proof.
    const to = {
      hostname: "127.0.0.1",
      port: server.addr.port,
      serverName: "agent1",
      caPem: ids.cli.caPem,
    };
    const none = await helloReply(to, { proof: 2, nonce: new Uint8Array(32), dialed: "agent1:1" });
    assert(none.includes("lacks its nonce, certificate"), JSON.stringify(none));
    const old = await helloReply(to, {});
    assert(old.includes("peer proof of version 2; upgrade"), JSON.stringify(old));
  } finally {
    server.close();
  }
});

Deno.test("over QUIC a thousand random frames on an authenticated connection get errors, and the agent keeps answering", async () => {
  const ids = await identities();
  const server = new RpcServer(ids.agent, { health: () => Promise.resolve("alive") }, {
    hostname: "127.0.0.1",
    port: 0,
  });
  server.start();
  const c = await RpcClient.connect(`127.0.0.1:${server.addr.port}`, ids.cli);
  const raw = (c as unknown as { conn: Deno.QuicConn }).conn;
  const { encodeFrame, FrameKind } = await import("../src/net/frame.ts");
  try {
    const t0 = performance.now();
    let n = 0;
    for (; n < 1000 && performance.now() - t0 < 20_000; n++) {
      const s = await raw.createBidirectionalStream();
      const w = s.writable.getWriter();
      const payload = crypto.getRandomValues(new Uint8Array(n % 200));
      const frame = n % 4 === 0
        ? payload
        : encodeFrame(n % 3 ? FrameKind.CONTROL : FrameKind.DATA, payload);
      await w.write(frame.length ? frame : new Uint8Array(1)).catch(() => {});
      await w.close().catch(() => {});
      for await (const _ of s.readable) { /* drain the error reply */ }
    }
    assert(n >= 100, `sent ${n} frames`);
    assertEquals(await c.call("health"), "alive");
  } finally {
    c.close();
    server.close();
  }
});

Deno.test("an agent address that is not HOST:PORT is a local configuration error, not a peer's bad-request", async () => {
  const e = await assertRejects(
    () => RpcClient.connect("agent1", {} as Identity),
    ConfigError,
    `agent address "agent1" has no port; write HOST:PORT`,
  );
  assert(!(e instanceof RpcError), "no peer refused anything");
});
