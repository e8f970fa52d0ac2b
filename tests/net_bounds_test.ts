/**
 * Bounded work per connection (issue 14 item 4): an authenticated client's `health` stays fast
 * while 60 unauthenticated connections send garbage and hellos they never finish and an
 * authenticated one floods garbage streams; a connection has at most 64 calls in flight, an
 * address at most 16 connections, and at most 32 connections authenticate at once. Prints the
 * p50/p99 of health with and without the hostile load, and with the bounds lifted.
 */
import { assert, assertEquals } from "./helpers/assert.ts";
import { initCa, issueHost } from "../src/cli/ca_admin.ts";
import { type Identity, loadIdentity } from "../src/net/identity.ts";
import { RpcClient, RpcServer } from "../src/net/quic.ts";
import type { ServerLimits } from "../src/net/conn_guard.ts";
import { encodeControl, encodeFrame, FrameKind } from "../src/net/frame.ts";
import { NONCE_BYTES } from "../src/net/peer_proof.ts";
import { RPC_VERSION } from "../src/net/rpc_messages.ts";

async function ids() {
  const d = Deno.makeTempDirSync({ prefix: "dcres-bounds-" });
  await initCa(`${d}/ca`);
  await issueHost({ caDir: `${d}/ca`, host: "agent1", ips: ["127.0.0.1"], outDir: `${d}/a` });
  await issueHost({ caDir: `${d}/ca`, host: "alice", role: "operator", outDir: `${d}/op` });
  return { agent: loadIdentity(`${d}/a`), op: loadIdentity(`${d}/op`) };
}

function serve(id: Identity, limits: Partial<ServerLimits> = {}, inFlight = { n: 0, max: 0 }) {
  const s = new RpcServer(
    id,
    {
      health: () => Promise.resolve({ ok: true }),
      hang: async (_a, ctx) => {
        inFlight.max = Math.max(inFlight.max, ++inFlight.n);
        await new Promise((r) => ctx.signal.addEventListener("abort", r, { once: true }));
        inFlight.n--;
      },
    },
    { hostname: "127.0.0.1", port: 0 },
    () => {},
    undefined,
    { limits },
  );
  s.start();
  return s;
}

/** p50 and p99 in ms of `n` health calls one after another. */
async function latency(c: RpcClient, n = 300): Promise<{ p50: number; p99: number }> {
  const ms: number[] = [];
  for (let i = 0; i < n; i++) {
    const t = performance.now();
    await c.call("health");
    ms.push(performance.now() - t);
  }
  ms.sort((a, b) => a - b);
  const at = (q: number) =>
    Number(ms[Math.min(ms.length - 1, Math.floor(q * ms.length))].toFixed(2));
  return { p50: at(0.5), p99: at(0.99) };
}

/** A connection from `ip` that sends `bytes` on one stream and then nothing. */
async function hostile(port: number, ip: string, caPem: string, bytes: Uint8Array) {
  const endpoint = new Deno.QuicEndpoint({ hostname: ip, port: 0 });
  try {
    const conn = await Deno.connectQuic({
      hostname: "127.0.0.1",
      port,
      alpnProtocols: ["dcres/1"],
      caCerts: [caPem],
      serverName: "127.0.0.1",
      endpoint,
    });
    const s = await conn.createBidirectionalStream();
    await s.writable.getWriter().write(bytes);
    return { conn, endpoint };
  } catch {
    endpoint.close();
    return undefined;
  }
}

/** Garbage frames on fresh streams of an authenticated connection until `stop`. */
async function flood(c: RpcClient, stop: { done: boolean }) {
  const raw = (c as unknown as { conn: Deno.QuicConn }).conn;
  for (let n = 0; !stop.done; n++) {
    const s = await raw.createBidirectionalStream().catch(() => undefined);
    if (!s) return;
    const w = s.writable.getWriter();
    const junk = crypto.getRandomValues(new Uint8Array(64 + n % 500));
    await w.write(n % 2 ? junk : encodeFrame(FrameKind.CONTROL, junk)).catch(() => {});
    await w.close().catch(() => {});
    for await (const _ of s.readable) { /* the refusal */ }
  }
}

/** Measures health under 60 unauthenticated connections and a garbage flood; returns the figures. */
async function underLoad(server: RpcServer, id: { agent: Identity; op: Identity }) {
  const port = server.addr.port, addr = `127.0.0.1:${port}`;
  const c = await RpcClient.connect(addr, id.op);
  const noisy = await RpcClient.connect(addr, id.op);
  const quiet = await latency(c);
  const hello = encodeControl({
    v: RPC_VERSION,
    hello: RPC_VERSION,
    proof: 2,
    nonce: crypto.getRandomValues(new Uint8Array(NONCE_BYTES)),
    cert: id.op.certPem,
    dialed: addr,
  });
  const conns = await Promise.all(Array.from({ length: 60 }, (_, i) =>
    hostile(
      port,
      `127.0.0.${50 + (i % 4)}`,
      id.agent.caPem,
      i % 2 ? hello : crypto.getRandomValues(new Uint8Array(4096)),
    )));
  const stop = { done: false };
  const flooding = flood(noisy, stop);
  const loaded = await latency(c);
  stop.done = true;
  await flooding;
  for (const h of conns) {
    h?.conn.close();
    h?.endpoint.close();
  }
  c.close();
  noisy.close();
  return { quiet, loaded, connected: conns.filter(Boolean).length };
}

Deno.test("health stays under 50 ms (p99) while 60 unauthenticated connections and an authenticated one send hostile input", async () => {
  const id = await ids();
  const server = serve(id.agent);
  try {
    const r = await underLoad(server, id);
    console.log(
      `bounded: health without load p50 ${r.quiet.p50} ms p99 ${r.quiet.p99} ms; ` +
        `under load p50 ${r.loaded.p50} ms p99 ${r.loaded.p99} ms; refused ${server.refused}`,
    );
    assert(r.loaded.p99 < 50, `health p99 ${r.loaded.p99} ms under hostile load`);
  } finally {
    server.close();
  }
  const open = serve(id.agent, { handshakes: 1e6, connectionsPerAddress: 1e6 });
  try {
    const r = await underLoad(open, id);
    console.log(
      `unbounded: health without load p50 ${r.quiet.p50} ms p99 ${r.quiet.p99} ms; ` +
        `under load p50 ${r.loaded.p50} ms p99 ${r.loaded.p99} ms`,
    );
  } finally {
    open.close();
  }
});

Deno.test("a connection has at most 64 calls in flight, an address 16 connections, and 32 connections authenticate at once", async () => {
  const id = await ids();
  const inFlight = { n: 0, max: 0 };
  const server = serve(id.agent, { handshakeTimeoutMs: 3000 }, inFlight);
  const port = server.addr.port, addr = `127.0.0.1:${port}`;
  const c = await RpcClient.connect(addr, id.op);
  const held: Array<{ conn: Deno.QuicConn; endpoint: Deno.QuicEndpoint } | undefined> = [];
  try {
    const calls = Array.from(
      { length: 80 },
      () => c.call("hang", {}, { deadlineMs: 1500 }).catch((e) => e),
    );
    await new Promise((r) => setTimeout(r, 500));
    assertEquals(inFlight.max, 64);
    await Promise.all(calls);
    // The 16 waiting ran once slots freed: every call reached its handler.
    assertEquals(inFlight.max, 64);
    assertEquals(inFlight.n, 0);
    for (let i = 0; i < 17; i++) {
      held.push(await hostile(port, "127.0.0.60", id.agent.caPem, new Uint8Array(1)));
    }
    await new Promise((r) => setTimeout(r, 300));
    const before = server.refused;
    for (let i = 0; i < 20; i++) {
      held.push(await hostile(port, `127.0.0.${61 + i}`, id.agent.caPem, new Uint8Array(1)));
    }
    await new Promise((r) => setTimeout(r, 300));
    // 16 from .60 plus 16 of the 20 others fill the 32 handshakes; the 17th from .60 and 4 more are refused.
    assertEquals(server.refused - before, 4);
    assert(before >= 1, "the 17th connection from one address was not refused");
    assertEquals(await c.call("health"), { ok: true });
  } finally {
    for (const h of held) {
      h?.conn.close();
      h?.endpoint.close();
    }
    c.close();
    server.close();
  }
});
