/**
 * Revocation (issue 14 item 2): `dcres ca revoke` writes the CA's X.509 CRL; a server that holds it
 * refuses the revoked client at the handshake, cuts an already-connected one off within its
 * re-check period, and keeps serving everyone else; a CRL the CA did not sign, or an older one, is
 * not taken.
 */
import { assert, assertEquals, assertRejects } from "./helpers/assert.ts";
import { initCa, issueHost } from "../src/cli/ca_admin.ts";
import { revokeSerial } from "../src/cli/ca_revoke.ts";
import { loadIdentity } from "../src/net/identity.ts";
import { RpcClient, RpcServer } from "../src/net/quic.ts";
import { CRL_FILE, readCrl, Revocations } from "../src/net/revocation.ts";
import { IdentityError } from "../src/net/x509.ts";
import { RpcError } from "../src/rpc/errors.ts";

const RECHECK_MS = 300;

async function setup() {
  const d = Deno.makeTempDirSync({ prefix: "dcres-revoke-" });
  await initCa(`${d}/ca`);
  const issue = (host: string, ips: string[], role: "agent" | "operator") =>
    issueHost({ caDir: `${d}/ca`, host, ips, role, outDir: `${d}/${host}` });
  await issue("agent1", ["127.0.0.1"], "agent");
  const alice = await issue("alice", [], "operator");
  await issue("bob", [], "operator");
  const revocations = await Revocations.load(`${d}/agent1`, loadIdentity(`${d}/agent1`).caPem);
  const server = new RpcServer(
    loadIdentity(`${d}/agent1`),
    { health: () => Promise.resolve({ ok: true }) },
    { hostname: "127.0.0.1", port: 0 },
    () => {},
    undefined,
    { revocations, limits: { recheckMs: RECHECK_MS } },
  );
  server.start();
  const addr = `127.0.0.1:${server.addr.port}`;
  const connect = (who: string) => RpcClient.connect(addr, loadIdentity(`${d}/${who}`));
  return { d, server, revocations, alice, connect };
}

Deno.test("a revoked client is refused at connect, and one already connected is cut off within the re-check period", async () => {
  const { d, server, revocations, alice, connect } = await setup();
  const a = await connect("alice");
  const b = await connect("bob");
  try {
    assertEquals(await a.call("health"), { ok: true });
    const info = await revokeSerial(`${d}/ca`, alice.serial);
    assertEquals(info.revoked, [alice.serial.replace(/^(00)+/, "")]);
    const t0 = performance.now();
    Deno.copyFileSync(`${d}/ca/${CRL_FILE}`, `${d}/agent1/${CRL_FILE}`);
    let cut = false;
    while (performance.now() - t0 < 5 * RECHECK_MS) {
      try {
        await a.call("health", {}, { deadlineMs: 500 });
      } catch {
        cut = true;
        break;
      }
      await new Promise((r) => setTimeout(r, 25));
    }
    const ms = performance.now() - t0;
    assert(cut, "the revoked client was not cut off");
    console.log(`revoked client cut off ${ms.toFixed(0)} ms after ca.crl changed`);
    assert(ms < 2 * RECHECK_MS + 500, `cut off after ${ms} ms`);
    assertEquals(revocations.count, 1);
    const e = await assertRejects(() => connect("alice"), RpcError);
    assert(/revoked/.test(e.message), e.message);
    assertEquals(await b.call("health"), { ok: true });
  } finally {
    a.close();
    b.close();
    server.close();
  }
});

Deno.test("a peer whose certificate expired while connected is cut off at the re-check", async () => {
  const { server, connect } = await setup();
  const b = await connect("bob");
  try {
    assertEquals(await b.call("health"), { ok: true });
    assertEquals(await server.recheck(new Date(Date.now() + 3650 * 86400_000)), 1);
    await assertRejects(() => b.call("health", {}, { deadlineMs: 500 }));
    assertEquals(server.peers(), []);
  } finally {
    b.close();
    server.close();
  }
});

Deno.test("a CRL another CA signed, or one older than the CRL held, is not taken", async () => {
  const { d, server, revocations, alice } = await setup();
  server.close();
  await initCa(`${d}/other`);
  await revokeSerial(`${d}/other`, alice.serial);
  const foreign = Deno.readTextFileSync(`${d}/other/${CRL_FILE}`);
  await assertRejects(
    () => readCrl(foreign, loadIdentity(`${d}/agent1`).caPem, "x"),
    IdentityError,
  );
  // A foreign CRL in place at start stops the agent; during a reload it is reported and ignored.
  Deno.writeTextFileSync(`${d}/agent1/${CRL_FILE}`, foreign);
  await assertRejects(
    () => Revocations.load(`${d}/agent1`, loadIdentity(`${d}/agent1`).caPem),
    IdentityError,
  );
  assertEquals(await revocations.refresh(), false);
  assertEquals(revocations.revoked(alice.serial), undefined);
  await revokeSerial(`${d}/ca`, "0abc");
  const older = Deno.readTextFileSync(`${d}/ca/${CRL_FILE}`);
  await revokeSerial(`${d}/ca`, alice.serial);
  Deno.copyFileSync(`${d}/ca/${CRL_FILE}`, `${d}/agent1/${CRL_FILE}`);
  assertEquals(await revocations.refresh(), true);
  assert(revocations.revoked(alice.serial));
  Deno.writeTextFileSync(`${d}/agent1/${CRL_FILE}`, older);
  assertEquals(await revocations.refresh(), false);
  assert(revocations.revoked(alice.serial), "an older CRL un-revoked a certificate");
});

Deno.test("a client holding the CA's revocation list refuses an agent whose certificate was revoked", async () => {
  const { d, server, connect } = await setup();
  try {
    const agent = loadIdentity(`${d}/agent1`);
    const { inspectCertificate } = await import("../src/cli/ca_admin.ts");
    const serial = (await inspectCertificate(agent.certPem)).serial;
    await revokeSerial(`${d}/ca`, serial);
    // Bob has not been given the list yet: he still reaches the agent.
    (await connect("bob")).close();
    Deno.copyFileSync(`${d}/ca/${CRL_FILE}`, `${d}/alice/${CRL_FILE}`);
    const e = await assertRejects(() => connect("alice"), RpcError);
    assert(e.message.includes(`(serial ${serial}) was revoked on`), e.message);
  } finally {
    server.close();
  }
});

Deno.test("an identity issued after a revocation gets the CA's revocation list and refuses the revoked peer from its first start", async () => {
  const { d, server, alice } = await setup();
  server.close();
  await revokeSerial(`${d}/ca`, alice.serial);
  const cli = async (...args: string[]) => {
    const p = await new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        "--allow-all",
        "--unstable-net",
        new URL("../main.ts", import.meta.url).pathname,
        ...args,
      ],
      stdout: "piped",
      stderr: "piped",
    }).output();
    return {
      code: p.code,
      out: new TextDecoder().decode(p.stdout),
      err: new TextDecoder().decode(p.stderr),
    };
  };
  const issued = await cli(
    "ca",
    "issue",
    "--ca",
    `${d}/ca`,
    "--host",
    "agent2",
    "--ip",
    "127.0.0.1",
    "--out",
    `${d}/agent2`,
  );
  assertEquals(issued.code, 0, issued.err);
  assert(issued.out.includes(`${d}/agent2/${CRL_FILE}`), issued.out);
  const held = await Revocations.load(`${d}/agent2`, loadIdentity(`${d}/agent2`).caPem);
  assert(held.revoked(alice.serial), "the new identity does not know alice was revoked");
  // A list the CA did not sign is refused in one line, and nothing is copied.
  await initCa(`${d}/other`);
  await revokeSerial(`${d}/other`, "0abc");
  Deno.copyFileSync(`${d}/other/${CRL_FILE}`, `${d}/ca/${CRL_FILE}`);
  const bad = await cli(
    "ca",
    "issue",
    "--ca",
    `${d}/ca`,
    "--host",
    "agent3",
    "--out",
    `${d}/agent3`,
  );
  assert(bad.code !== 0, bad.out);
  assert(
    bad.err.trim().split("\n").length === 1 && bad.err.includes(`${d}/ca/${CRL_FILE}`),
    bad.err,
  );
  await assertRejects(() => Deno.stat(`${d}/agent3`), Deno.errors.NotFound);
});
