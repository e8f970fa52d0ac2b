/** Cluster CA and host identities: what `dcres ca init|issue` write, and how peers are judged. */
import tls from "node:tls";
import { join } from "node:path";
import { assert, assertEquals, assertRejects, assertThrows } from "./helpers/assert.ts";
import {
  certificatePem,
  checkIdentity,
  loadIdentity,
  verifyPeerCertificate,
} from "../src/net/identity.ts";
import { IdentityError } from "../src/net/x509.ts";
import { initCa, inspectCertificate, issueHost } from "../src/cli/ca_admin.ts";
import { caInit, caIssue } from "../src/cli/ca.ts";
import { UsageError } from "../src/cli/units.ts";

const DAY = 86_400_000;

/** A fresh directory for one test, removed by `fn`'s end. */
async function withTempDir(fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = Deno.makeTempDirSync({ prefix: "dcres-identity-" });
  try {
    await fn(dir);
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
}

/** A CA in `root/name` and host identities signed by it in `root/<host>`. */
async function cluster(root: string, name: string, hosts: string[]): Promise<void> {
  await initCa(join(root, name));
  for (const host of hosts) {
    await issueHost({
      caDir: join(root, name),
      host,
      ips: ["127.0.0.1"],
      outDir: join(root, host),
    });
  }
}

function modeOf(path: string): number {
  return Deno.statSync(path).mode! & 0o777;
}

/** The error is an IdentityError, one line, and its message mentions every one of `what`. */
function oneLine(e: Error, ...what: string[]): void {
  assert(e instanceof IdentityError, `expected IdentityError, got ${e.name}: ${e.message}`);
  assert(!e.message.includes("\n"), `not one line: ${e.message}`);
  for (const w of what) assert(e.message.includes(w), `"${e.message}" should mention "${w}"`);
}

/** Resolves with `p`, or rejects after `ms` naming `what`; the timer is always cleared. */
async function deadline<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  try {
    return await Promise.race([
      p,
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error(`${what}: no answer within ${ms} ms`)), ms);
      }),
    ]);
  } finally {
    clearTimeout(timer);
  }
}

Deno.test("a host certificate issued by the cluster CA verifies against it and names its host", async () => {
  await withTempDir(async (d) => {
    const ca = await initCa(join(d, "ca"));
    assert(/^dcres cluster CA [0-9a-f]{12}$/.test(ca.subject), ca.subject);
    const h = await issueHost({ caDir: join(d, "ca"), host: "node1", outDir: join(d, "node1") });
    const id = loadIdentity(join(d, "node1"));
    const v = await verifyPeerCertificate(id.certPem, id.caPem);
    assert(v.ok, JSON.stringify(v));
    assertEquals([v.host, v.role, v.names], ["node1", "agent", ["node1"]]);
    assertEquals((await checkIdentity(join(d, "node1"))).host, "node1");
    assertEquals(id.caPem, Deno.readTextFileSync(join(d, "ca", "ca.crt")));

    const cert = await inspectCertificate(id.certPem);
    assertEquals(cert.subject, "CN=node1");
    assertEquals(cert.issuer, `CN=${ca.subject}`);
    assertEquals(cert.ca, false);
    assertEquals(cert.keyUsage, ["digitalSignature"]);
    assertEquals(cert.extKeyUsage, ["serverAuth", "clientAuth"]);
    const days = (Date.parse(cert.notAfter) - Date.now()) / DAY;
    assert(days > 824.9 && days <= 825, `default validity ${days} days`);
    assertEquals(h.sha256, cert.sha256);

    const caCert = await inspectCertificate(id.caPem);
    assertEquals(caCert.subject, caCert.issuer);
    assertEquals(caCert.ca, true);
    assertEquals(caCert.keyUsage, ["keyCertSign", "cRLSign"]);
    const years = (Date.parse(caCert.notAfter) - Date.parse(caCert.notBefore)) / (365.25 * DAY);
    assert(Math.abs(years - 10) < 0.01, `CA validity ${years} years`);
  });
});

Deno.test("key files are created mode 0600 and directories 0700, even when replacing a readable file", async () => {
  await withTempDir(async (d) => {
    await cluster(d, "ca", ["node1"]);
    assertEquals(modeOf(join(d, "ca")), 0o700);
    assertEquals(modeOf(join(d, "node1")), 0o700);
    assertEquals(modeOf(join(d, "ca", "ca.key")), 0o600);
    assertEquals(modeOf(join(d, "node1", "host.key")), 0o600);
    assertEquals(modeOf(join(d, "node1", "host.crt")), 0o644);

    // A key file someone made world-readable is replaced by a new 0600 file, not rewritten in place.
    Deno.chmodSync(join(d, "node1", "host.key"), 0o644);
    await issueHost({ caDir: join(d, "ca"), host: "node1", outDir: join(d, "node1"), force: true });
    assertEquals(modeOf(join(d, "node1", "host.key")), 0o600);

    const nested = join(d, "a", "b", "ca");
    await initCa(nested);
    assertEquals(modeOf(join(d, "a")), 0o700);
    assertEquals(modeOf(nested), 0o700);
    assertEquals(Deno.readDirSync(nested).toArray().map((e) => e.name).sort(), [
      "ca.crt",
      "ca.key",
    ]);
  });
});

Deno.test("the subjectAltNames hold the host name and every --ip, IPv6 normalized", async () => {
  await withTempDir(async (d) => {
    await initCa(join(d, "ca"));
    const h = await issueHost({
      caDir: join(d, "ca"),
      host: "node-2.rack1",
      ips: ["10.0.0.5", "FD00:0:0::5", "127.0.0.2", "10.0.0.5"],
      days: 30,
      outDir: join(d, "out"),
    });
    assertEquals(h.ips, ["10.0.0.5", "fd00::5", "127.0.0.2"]);
    const cert = await inspectCertificate(loadIdentity(join(d, "out")).certPem);
    assertEquals(cert.dns, ["node-2.rack1"]);
    assertEquals(cert.ips, ["10.0.0.5", "fd00::5", "127.0.0.2"]);
    const days = (Date.parse(cert.notAfter) - Date.now()) / DAY;
    assert(days > 29.9 && days <= 30, `--days 30 gave ${days} days`);
  });
});

Deno.test("verifyPeerCertificate refuses self-signed, foreign-CA, tampered, expired and not-yet-valid certificates, each for its own reason", async () => {
  await withTempDir(async (d) => {
    await cluster(d, "ca", ["good"]);
    await cluster(d, "other-ca", ["foreign"]);
    const caPem = Deno.readTextFileSync(join(d, "ca", "ca.crt"));
    const good = loadIdentity(join(d, "good")).certPem;
    await issueHost({
      caDir: join(d, "ca"),
      host: "old",
      days: 1,
      validFrom: new Date(Date.now() - 10 * DAY),
      outDir: join(d, "old"),
    });

    const reasons: string[] = [];
    const refused = async (certPem: string, expect: string, now?: Date) => {
      const v = await verifyPeerCertificate(certPem, caPem, now);
      assert(!v.ok, `accepted, expected "${expect}"`);
      assert(v.reason.includes(expect), `reason "${v.reason}" should mention "${expect}"`);
      reasons.push(v.reason);
    };
    // The other CA's own certificate is a self-signed certificate.
    await refused(Deno.readTextFileSync(join(d, "other-ca", "ca.crt")), "self-signed");
    await refused(loadIdentity(join(d, "foreign")).certPem, "not by the cluster CA");
    await refused(loadIdentity(join(d, "old")).certPem, "expired on");
    await refused(good, "not valid before", new Date(Date.now() - DAY));
    await refused(caPem, "cluster CA itself");
    await refused("", "not a PEM certificate");

    // Same issuer name, but the signature's last byte changed.
    const der = Uint8Array.fromBase64(good.replace(/-----[A-Z ]+-----|\s/g, ""));
    der[der.length - 1] ^= 1;
    await refused(certificatePem(der), "signature does not verify");

    assertEquals(new Set(reasons).size, reasons.length, `reasons not distinct: ${reasons}`);
    const v = await verifyPeerCertificate(good, caPem);
    assertEquals([v.ok, v.ok && v.host], [true, "good"]);
  });
});

Deno.test("an existing CA or host identity is not overwritten without force", async () => {
  await withTempDir(async (d) => {
    const first = await initCa(join(d, "ca"));
    const caKey = Deno.readTextFileSync(join(d, "ca", "ca.key"));
    oneLine(await assertRejects(() => initCa(join(d, "ca"))), join(d, "ca"), "--force");
    assertEquals(Deno.readTextFileSync(join(d, "ca", "ca.key")), caKey);

    // A half-present CA (only the key) is also refused.
    Deno.removeSync(join(d, "ca", "ca.crt"));
    oneLine(await assertRejects(() => initCa(join(d, "ca"))), "ca.key exists", "--force");
    const second = await initCa(join(d, "ca"), { force: true });
    assert(second.id !== first.id);
    assert(Deno.readTextFileSync(join(d, "ca", "ca.key")) !== caKey);

    const out = join(d, "node1");
    await issueHost({ caDir: join(d, "ca"), host: "node1", outDir: out });
    const hostKey = Deno.readTextFileSync(join(out, "host.key"));
    oneLine(
      await assertRejects(() => issueHost({ caDir: join(d, "ca"), host: "node1", outDir: out })),
      join(out, "host.key"),
      "--force",
    );
    assertEquals(Deno.readTextFileSync(join(out, "host.key")), hostKey);
    await issueHost({ caDir: join(d, "ca"), host: "node1", outDir: out, force: true });
    assert(Deno.readTextFileSync(join(out, "host.key")) !== hostKey);

    // Issuing into the CA directory itself: its ca.crt is the same, so not a conflict.
    await issueHost({ caDir: join(d, "ca"), host: "cahost", outDir: join(d, "ca") });
    assertEquals(loadIdentity(join(d, "ca")).caPem, Deno.readTextFileSync(join(d, "ca", "ca.crt")));

    // A ca.crt of another CA in the output directory is a conflict.
    await initCa(join(d, "ca2"));
    oneLine(
      await assertRejects(() =>
        issueHost({ caDir: join(d, "ca2"), host: "node1", outDir: out, force: false })
      ),
      join(out, "ca.crt"),
      "another CA",
    );
    assertEquals(Deno.readDirSync(out).toArray().map((e) => e.name).sort(), [
      "ca.crt",
      "host.crt",
      "host.key",
    ]);
  });
});

Deno.test("each bad input is one line naming the file or flag and what to do", async () => {
  await withTempDir(async (d) => {
    await initCa(join(d, "ca"));
    await initCa(join(d, "ca2"));
    const issue = (o: Partial<Parameters<typeof issueHost>[0]>) => () =>
      issueHost({ caDir: join(d, "ca"), host: "node1", outDir: join(d, "out"), ...o });

    oneLine(
      await assertRejects(issue({ caDir: join(d, "nope") })),
      `--ca ${join(d, "nope")}: no such directory`,
      "dcres ca init",
    );
    const noKey = join(d, "nokey");
    Deno.mkdirSync(noKey);
    Deno.copyFileSync(join(d, "ca", "ca.crt"), join(noKey, "ca.crt"));
    oneLine(await assertRejects(issue({ caDir: noKey })), join(noKey, "ca.key"), "missing");
    const noCert = join(d, "nocert");
    Deno.mkdirSync(noCert);
    oneLine(await assertRejects(issue({ caDir: noCert })), join(noCert, "ca.crt"), "missing");

    // ca2's key next to ca's certificate.
    const mixed = join(d, "mixed");
    Deno.mkdirSync(mixed);
    Deno.copyFileSync(join(d, "ca", "ca.crt"), join(mixed, "ca.crt"));
    Deno.writeTextFileSync(join(mixed, "ca.key"), Deno.readTextFileSync(join(d, "ca2", "ca.key")), {
      mode: 0o600,
    });
    oneLine(await assertRejects(issue({ caDir: mixed })), join(mixed, "ca.key"), "does not match");
    Deno.writeTextFileSync(join(mixed, "ca.crt"), "garbage\n");
    oneLine(await assertRejects(issue({ caDir: mixed })), join(mixed, "ca.crt"), "not a PEM");

    for (const ip of ["300.1.1.1", "10.0.0", "fe80::1%eth0", "nonsense", ""]) {
      const e = await assertRejects(issue({ ips: ["10.0.0.1", ip] }));
      oneLine(e, `--ip ${ip}: not an IPv4 or IPv6 address`);
      assert((e as IdentityError).usage);
    }
    for (const host of ["", "  "]) {
      oneLine(await assertRejects(issue({ host })), "--host: empty host name");
    }
    oneLine(await assertRejects(issue({ host: "bad_name!" })), "--host bad_name!: not a valid");
    oneLine(await assertRejects(issue({ host: "10.0.0.1" })), "--host 10.0.0.1", "--ip");
    oneLine(await assertRejects(issue({ days: 0 })), "--days 0");
    oneLine(await assertRejects(issue({ days: 5000 })), "--days 5000");
    // Nothing was written by any of the failed attempts.
    assertThrows(() => Deno.statSync(join(d, "out")), Deno.errors.NotFound);

    oneLine(assertThrows(() => loadIdentity(join(d, "out"))), join(d, "out"), "dcres ca issue");
    await issueHost({ caDir: join(d, "ca"), host: "node1", outDir: join(d, "out") });
    Deno.chmodSync(join(d, "out", "host.key"), 0o640);
    oneLine(assertThrows(() => loadIdentity(join(d, "out"))), "mode 0640", "chmod 600");
    Deno.chmodSync(join(d, "out", "host.key"), 0o600);
    Deno.removeSync(join(d, "out", "ca.crt"));
    oneLine(assertThrows(() => loadIdentity(join(d, "out"))), join(d, "out", "ca.crt"), "missing");
  });
});

Deno.test("dcres ca init and ca issue report JSON, and malformed flags are usage errors", async () => {
  await withTempDir(async (d) => {
    const printed: string[] = [];
    const log = console.log;
    console.log = (s: string) => printed.push(s);
    try {
      const g = { json: true };
      assertEquals(await caInit(g, { dir: join(d, "ca") }), 0);
      const flags = { ca: join(d, "ca"), host: "n1", ip: ["127.0.0.1"], days: "7" };
      assertEquals(await caIssue(g, { ...flags, out: join(d, "n1") }), 0);
      await assertRejects(
        () => caIssue(g, { ...flags, out: join(d, "x"), days: "1.5" }),
        UsageError,
      );
      await assertRejects(
        () => caIssue(g, { ...flags, out: join(d, "x"), ip: ["1.2.3.999"] }),
        UsageError,
        "--ip 1.2.3.999",
      );
      await assertRejects(
        () => caIssue(g, { ...flags, out: join(d, "x"), host: "" }),
        UsageError,
        "--host",
      );
      await assertRejects(
        () => caIssue(g, { ...flags, out: join(d, "n1") }),
        IdentityError,
        "--force",
      );
    } finally {
      console.log = log;
    }
    assertEquals(printed.length, 2);
    const ca = JSON.parse(printed[0]);
    const host = JSON.parse(printed[1]);
    assertEquals(ca.keyFile, join(d, "ca", "ca.key"));
    assertEquals(host.host, "n1");
    assertEquals(host.ips, ["127.0.0.1"]);
    assertEquals(host.issuer, ca.subject);
  });
});

Deno.test("identities work with Deno's TLS: the client verifies the server against the cluster CA and presents its own certificate", async () => {
  await withTempDir(async (d) => {
    await cluster(d, "ca", ["server", "client"]);
    await cluster(d, "other-ca", ["stranger"]);
    const server = loadIdentity(join(d, "server"));
    const client = loadIdentity(join(d, "client"));
    const stranger = loadIdentity(join(d, "stranger"));

    // Deno.listenTls takes no caCerts and cannot request or verify client certificates (Deno
    // 2.9.6): the server half of mutual TLS is shown with node:tls in the next test.
    const listener = Deno.listenTls({
      hostname: "127.0.0.1",
      port: 0,
      cert: server.certPem,
      key: server.keyPem,
      alpnProtocols: ["dcres/1"],
    });
    const serverErrors: string[] = [];
    const serving = (async () => {
      for await (const conn of listener) {
        try {
          await conn.handshake();
          const buf = new Uint8Array(64);
          const n = await conn.read(buf);
          if (n) await conn.write(buf.subarray(0, n));
        } catch (e) {
          serverErrors.push((e as Error).message);
        } finally {
          conn.close();
        }
      }
    })();
    try {
      const port = listener.addr.port;
      const conn = await deadline(
        Deno.connectTls({
          hostname: "127.0.0.1",
          port,
          caCerts: [client.caPem],
          cert: client.certPem,
          key: client.keyPem,
          alpnProtocols: ["dcres/1"],
        }),
        10_000,
        "connectTls",
      );
      try {
        assertEquals(
          (await deadline(conn.handshake(), 10_000, "handshake")).alpnProtocol,
          "dcres/1",
        );
        await conn.write(new TextEncoder().encode("ping"));
        const buf = new Uint8Array(64);
        const n = await deadline(conn.read(buf), 10_000, "read");
        assertEquals(new TextDecoder().decode(buf.subarray(0, n ?? 0)), "ping");
      } finally {
        conn.close();
      }

      // A client that trusts another CA refuses this server.
      const refused = await assertRejects(() =>
        deadline(
          (async () => {
            const c = await Deno.connectTls({
              hostname: "127.0.0.1",
              port,
              caCerts: [stranger.caPem],
              cert: stranger.certPem,
              key: stranger.keyPem,
            });
            try {
              await c.handshake();
            } finally {
              c.close();
            }
          })(),
          10_000,
          "connectTls to an untrusted server",
        )
      );
      assert(/UnknownIssuer|invalid peer certificate/i.test(refused.message), refused.message);
    } finally {
      listener.close();
      await deadline(serving, 10_000, "server loop");
    }
    assertEquals(serverErrors.length, 1, `server errors: ${serverErrors}`);
  });
});

Deno.test("mutual TLS over TCP (node:tls server requiring client certificates) accepts a cluster host and refuses strangers", async () => {
  await withTempDir(async (d) => {
    await cluster(d, "ca", ["server", "client"]);
    await cluster(d, "other-ca", ["stranger"]);
    const server = loadIdentity(join(d, "server"));
    const client = loadIdentity(join(d, "client"));
    const stranger = loadIdentity(join(d, "stranger"));

    const peers: string[] = [];
    const tlsErrors: string[] = [];
    const srv = tls.createServer({
      cert: server.certPem,
      key: server.keyPem,
      ca: [server.caPem],
      requestCert: true,
      rejectUnauthorized: true,
    }, (sock) => {
      const raw = sock.getPeerCertificate().raw;
      verifyPeerCertificate(certificatePem(new Uint8Array(raw)), server.caPem).then((v) => {
        peers.push(v.ok ? v.host : `refused: ${v.reason}`);
        sock.end(v.ok ? `hello ${v.host}` : "refused");
      });
    });
    srv.on("tlsClientError", (e: Error) => tlsErrors.push(e.message));
    await deadline(
      new Promise<void>((r) => srv.listen(0, "127.0.0.1", () => r())),
      10_000,
      "listen",
    );
    const port = (srv.address() as { port: number }).port;

    /** What the server said to a client presenting `id` (null: no certificate), or the error. */
    const talk = async (id: { certPem: string; keyPem: string } | null): Promise<string> => {
      const conn = await Deno.connectTls({
        hostname: "127.0.0.1",
        port,
        caCerts: [server.caPem],
        ...(id ? { cert: id.certPem, key: id.keyPem } : {}),
      });
      try {
        let text = "";
        const buf = new Uint8Array(256);
        for (let n; (n = await conn.read(buf)) !== null;) {
          text += new TextDecoder().decode(buf.subarray(0, n));
        }
        return text;
      } catch (e) {
        return `error: ${(e as Error).message}`;
      } finally {
        conn.close();
      }
    };
    try {
      assertEquals(await deadline(talk(client), 10_000, "cluster client"), "hello client");
      const none = await deadline(talk(null), 10_000, "client without a certificate");
      assert(none.startsWith("error:"), `no-certificate client got "${none}"`);
      const other = await deadline(talk(stranger), 10_000, "client of another CA");
      assert(other.startsWith("error:"), `foreign client got "${other}"`);
    } finally {
      await deadline(new Promise((r) => srv.close(r)), 10_000, "server close");
    }
    assertEquals(peers, ["client"]);
    assertEquals(tlsErrors.length, 2, `server-side TLS errors: ${tlsErrors}`);
  });
});
