/**
 * Who may call what, and who a peer is (issue 14, items 1 and 2), over real QUIC between agents on
 * loopback addresses of their own: a proof relayed by another cluster member is refused; a server
 * with a certificate from another CA is refused even when the client's TLS trusts that CA; an
 * operator's certificate cannot serve as an agent's, an agent's cannot call an operator's methods,
 * a third agent cannot touch pages of a VM whose main host it is not, and only the coordinator
 * (not an operator) may release a VM's pages that a main host left.
 */
import { assert, assertEquals, assertRejects } from "./helpers/assert.ts";
import { initCa, issueHost } from "../src/cli/ca_admin.ts";
import { type Identity, loadIdentity } from "../src/net/identity.ts";
import { RpcClient, RpcServer } from "../src/net/quic.ts";
import { RpcError } from "../src/rpc/errors.ts";
import { encodeControl } from "../src/net/frame.ts";
import { helloReply } from "./helpers/raw_hello.ts";
import type { Role } from "../src/rpc/roles.ts";
import { AGENT_ACCESS } from "../src/agent/access.ts";
import { pageHandlers } from "../src/agent/pages.ts";
import { mergesFromMain, PageOwners } from "../src/agent/page_owners.ts";
import { PageStores } from "../src/paging/page_store.ts";
import type { RpcHandler } from "../src/rpc/dispatcher.ts";

/** A cluster CA and certificates for hosts on 127.0.0.x, plus one from a foreign CA. */
async function cluster() {
  const d = Deno.makeTempDirSync({ prefix: "dcres-authz-" });
  await initCa(`${d}/ca`);
  const issue = async (host: string, ip: string | undefined, role: Role, ca = "ca") => {
    await issueHost({
      caDir: `${d}/${ca}`,
      host,
      ips: ip ? [ip] : [],
      role,
      outDir: `${d}/${host}`,
    });
    return loadIdentity(`${d}/${host}`);
  };
  await initCa(`${d}/foreign`);
  return {
    d,
    v: await issue("victim", "127.0.0.21", "agent"),
    m: await issue("member", "127.0.0.22", "agent"),
    third: await issue("third", "127.0.0.23", "agent"),
    op: await issue("alice", undefined, "operator"),
    coord: await issue("coord", undefined, "coordinator"),
    opAsServer: await issue("opserver", "127.0.0.24", "operator"),
    foreign: await issue("foreign", "127.0.0.25", "agent", "foreign"),
  };
}

/** An agent-like server at `ip` with the agent's access policy over `handlers`. */
function serve(id: Identity, ip: string, handlers: Record<string, RpcHandler>): RpcServer {
  const s = new RpcServer(id, handlers, { hostname: ip, port: 0 }, () => {}, AGENT_ACCESS);
  s.start();
  return s;
}

const addrOf = (s: RpcServer) => `${s.addr.hostname}:${s.addr.port}`;

/**
 * A cluster member at `ip` that relays every connection's streams to `target`, byte for byte, as a
 * member would to act on another agent as its client.
 */
function relay(ip: string, target: RpcServer, id: Identity) {
  const endpoint = new Deno.QuicEndpoint({ hostname: ip, port: 0 });
  const listener = endpoint.listen({
    cert: id.certPem,
    key: id.keyPem,
    alpnProtocols: ["dcres/1"],
  });
  const conns: Deno.QuicConn[] = [];
  (async () => {
    for await (const incoming of listener) {
      const inbound = await incoming.accept();
      const outbound = await Deno.connectQuic({
        hostname: target.addr.hostname,
        port: target.addr.port,
        alpnProtocols: ["dcres/1"],
        caCerts: [id.caPem],
        serverName: target.addr.hostname,
      });
      conns.push(inbound, outbound);
      (async () => {
        for await (const a of inbound.incomingBidirectionalStreams) {
          const b = await outbound.createBidirectionalStream();
          a.readable.pipeTo(b.writable).catch(() => {});
          b.readable.pipeTo(a.writable).catch(() => {});
        }
      })().catch(() => {});
    }
  })().catch(() => {});
  return {
    addr: `${endpoint.addr.hostname}:${endpoint.addr.port}`,
    close() {
      for (const c of conns) c.close();
      endpoint.close();
    },
  };
}

const health: Record<string, RpcHandler> = {
  health: (_a, ctx) => Promise.resolve({ peer: ctx.peer, role: ctx.role }),
  "vm.start": () => Promise.resolve("started"),
  "pages.held": () => Promise.resolve("held"),
};

Deno.test("a proof relayed by another cluster member to the agent behind it is refused", async () => {
  const c = await cluster();
  const victim = serve(c.v, "127.0.0.21", health);
  const r = relay("127.0.0.22", victim, c.m);
  try {
    // The victim sees a hello naming the member's address: it does not answer to that.
    const e = await assertRejects(() => RpcClient.connect(r.addr, c.op), RpcError);
    assert(
      e.message.includes(`the client dialed ${r.addr}, which this agent (victim, 127.0.0.21)`),
      e.message,
    );
    // Straight to the victim, the same client gets in, and the victim knows who it is.
    const ok = await RpcClient.connect(addrOf(victim), c.op);
    assertEquals(await ok.call("health"), { peer: "alice", role: "operator" });
    assertEquals(ok.host, "victim");
    ok.close();
  } finally {
    r.close();
    victim.close();
  }
});

Deno.test("an agent refuses a hello that names an address it does not answer to", async () => {
  const c = await cluster();
  const victim = serve(c.v, "127.0.0.21", health);
  try {
    // What a relay would have to forward once it rewrote the hello to name the victim's address
    // instead of its own is the other half: the victim refuses a hello naming any other.
    const reply = await helloReply(
      {
        hostname: "127.0.0.21",
        port: victim.addr.port,
        serverName: "127.0.0.21",
        caPem: c.op.caPem,
      },
      { proof: 2, nonce: new Uint8Array(32), cert: c.op.certPem, dialed: "127.0.0.22:7400" },
    );
    assert(reply.includes("the client dialed 127.0.0.22:7400, which this agent"), reply);
  } finally {
    victim.close();
  }
});

/**
 * A server at `ip` that answers any hello with a proof made with `id`, checking nothing, as one with
 * a certificate from another CA would.
 */
function impostor(ip: string, id: Identity) {
  const endpoint = new Deno.QuicEndpoint({ hostname: ip, port: 0 });
  const listener = endpoint.listen({
    cert: id.certPem,
    key: id.keyPem,
    alpnProtocols: ["dcres/1"],
  });
  (async () => {
    for await (const incoming of listener) {
      const conn = await incoming.accept();
      for await (const s of conn.incomingBidirectionalStreams) {
        await s.readable.getReader().read();
        await s.writable.getWriter().write(encodeControl({
          v: 1,
          nonce: new Uint8Array(32),
          cert: id.certPem,
          sig: new Uint8Array(64),
        }));
      }
    }
  })().catch(() => {});
  return { addr: `${endpoint.addr.hostname}:${endpoint.addr.port}`, close: () => endpoint.close() };
}

Deno.test("a server with another CA's certificate is refused even where TLS trusts that CA", async () => {
  const c = await cluster();
  const foreign = impostor("127.0.0.25", c.foreign);
  try {
    // The client runs with the foreign CA among its trusted roots, as a publicly trusted CA is.
    const script = `
      import { RpcClient } from "${new URL("../src/net/quic.ts", import.meta.url).href}";
      import { loadIdentity } from "${new URL("../src/net/identity.ts", import.meta.url).href}";
      try {
        await RpcClient.connect("${foreign.addr}", loadIdentity("${c.d}/alice"));
        console.log("connected");
      } catch (e) { console.log(e.message); }`;
    const out = await new Deno.Command(Deno.execPath(), {
      args: ["eval", "--unstable-net", script],
      env: { DENO_CERT: `${c.d}/foreign/ca.crt` },
      stdout: "piped",
      stderr: "piped",
    }).output();
    const said = new TextDecoder().decode(out.stdout) + new TextDecoder().decode(out.stderr);
    assert(!said.includes("connected"), said);
    assert(said.includes("is not the cluster's agent there: its certificate is refused"), said);
  } finally {
    foreign.close();
  }
});

Deno.test("an operator's certificate cannot serve as an agent's, nor an agent's call an operator's method", async () => {
  const c = await cluster();
  const fake = serve(c.opAsServer, "127.0.0.24", health);
  const victim = serve(c.v, "127.0.0.21", health);
  try {
    const e = await assertRejects(() => RpcClient.connect(addrOf(fake), c.op), RpcError);
    assert(e.message.includes("an operator certificate for opserver, not an agent's"), e.message);
    const agent = await RpcClient.connect(addrOf(victim), c.m);
    assertEquals(await agent.call("health"), { peer: "member", role: "agent" });
    const denied = await assertRejects(() => agent.call("vm.start", {}), RpcError) as RpcError;
    assertEquals(denied.code, "permission-denied");
    assertEquals(
      denied.message,
      "vm.start: member (role agent) may not call it: it needs role operator or coordinator",
    );
    agent.close();
    const op = await RpcClient.connect(addrOf(victim), c.op);
    assertEquals(await op.call("vm.start", {}), "started");
    const pages = await assertRejects(
      () => op.call("pages.held", { vm: "x", pages: 8 }),
      RpcError,
    ) as RpcError;
    assertEquals(pages.code, "permission-denied");
    op.close();
  } finally {
    fake.close();
    victim.close();
  }
});

Deno.test("a third agent's page or merge call about a VM whose main host it is not is refused", async () => {
  const c = await cluster();
  const stores = new PageStores(`${c.d}/pages`, 1024, "victim");
  const owners = new PageOwners(stores.dir);
  const sub = serve(c.v, "127.0.0.21", {
    ...pageHandlers(stores, `${c.d}/ckpt`, (p) => String(p), { owners }),
    ...mergesFromMain(owners, { "ckpt.abort": () => Promise.resolve("aborted") }, ["ckpt.abort"]),
  });
  try {
    const main = await RpcClient.connect(addrOf(sub), c.m);
    assertEquals(
      (await main.call<{ heldPages: number }>("pages.open", { vm: "vm1", pages: 8 }))
        .heldPages,
      0,
    );
    const third = await RpcClient.connect(addrOf(sub), c.third);
    for (const method of ["pages.open", "pages.held", "pages.drop"]) {
      const e = await assertRejects(
        () => third.call(method, { vm: "vm1", pages: 8 }),
        RpcError,
      ) as RpcError;
      assertEquals(e.code, "permission-denied", method);
      assert(e.message.includes("belong to its main host member; third may not"), e.message);
    }
    const merge = await assertRejects(
      () => third.call("ckpt.abort", { store: "vm1", generation: "g000002" }),
      RpcError,
    ) as RpcError;
    assertEquals(merge.code, "permission-denied");
    assert(merge.message.includes("is its main host member's; third may not"), merge.message);
    assertEquals(await main.call("ckpt.abort", { store: "vm1", generation: "g000002" }), "aborted");
    // Its own VM's pages are its own; once main drops vm1, another host may take it up.
    await third.call("pages.open", { vm: "vm2", pages: 8 });
    await main.call("pages.drop", { vm: "vm1" });
    await third.call("pages.open", { vm: "vm1", pages: 8 });
    // The coordinator releases the pages a failed main host left; an operator may not.
    const op = await RpcClient.connect(addrOf(sub), c.op);
    const denied = await assertRejects(() => op.call("pages.drop", { vm: "vm1" }), RpcError);
    assertEquals((denied as RpcError).code, "permission-denied");
    const coord = await RpcClient.connect(addrOf(sub), c.coord);
    assertEquals(await coord.call("pages.drop", { vm: "vm1" }), { dropped: "vm1" });
    await main.call("pages.open", { vm: "vm1", pages: 8 });
    main.close();
    third.close();
    op.close();
    coord.close();
  } finally {
    sub.close();
  }
});
