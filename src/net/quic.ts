/**
 * RPC over QUIC (ALPN dcres/1) between agents and clients. Deno's QUIC server cannot ask for or check
 * client certificates, so mutual authentication is the first exchange on every connection, before
 * any request is read: the server sends a random challenge, the client answers with its host
 * certificate and a signature over the challenge with its key, and the server checks that the cluster
 * CA issued the certificate and that the signature matches it. Then each request is one
 * bidirectional stream, served by the RPC dispatcher (src/rpc/dispatcher.ts): a request frame,
 * optional progress and DATA frames, one reply frame.
 */
import { Dispatcher, type RpcHandler } from "../rpc/dispatcher.ts";
import { MAX_DEADLINE_MS, within, withTimeout } from "../rpc/deadline.ts";
import { ConfigError, RpcError } from "../rpc/errors.ts";
import { formatHostPort, type HostPort, parseHostPort } from "./address.ts";
import { encodeControl, FrameKind } from "./frame.ts";
import { FrameReader } from "./frame_reader.ts";
import {
  type Identity,
  type PeerIdentity,
  signWithKey,
  verifyPeerCertificate,
  verifyWithCertificate,
} from "./identity.ts";
import {
  answersTo,
  NONCE_BYTES,
  proofBytes,
  serverMismatch,
  type Transcript,
} from "./peer_proof.ts";
import { IdentityError } from "./x509.ts";
import { Admission, DEFAULT_LIMITS, type ServerLimits, Slots } from "./conn_guard.ts";
import { readCrl, type Revocations, serialKey } from "./revocation.ts";
import type { AccessPolicy, Role } from "../rpc/roles.ts";
import { RPC_VERSION } from "./rpc_messages.ts";
import { callOnStream, type CallOptions } from "./stream_call.ts";
import { serveFramedCalls } from "./stream_serve.ts";

/** ALPN of the dcres protocol. */
export const ALPN = "dcres/1";
/** The version of the peer proof a hello offers; a peer of another version is refused by name. */
const PROOF_VERSION = 2;
const AUTH_TIMEOUT_MS = DEFAULT_LIMITS.handshakeTimeoutMs;
/** Frame limits while authenticating: small control messages, no DATA. */
const AUTH_LIMITS = { [FrameKind.CONTROL]: 16 << 10, [FrameKind.DATA]: 0 };

/** What an RpcServer is given besides its identity and methods. */
export interface ServerOptions {
  /** Bounds on connections and calls (defaults: DEFAULT_LIMITS). */
  limits?: Partial<ServerLimits>;
  /** Revoked certificates, refused at the handshake and cut off at the next re-check. */
  revocations?: Revocations;
  /** Methods whose calls may outlive the deadline cap (MAX_DEADLINE_MS), with their own cap. */
  channels?: Readonly<Record<string, number>>;
}

/** A QUIC RPC server with mutual authentication. */
export class RpcServer {
  readonly #identity: Identity;
  readonly #dispatcher: Dispatcher;
  readonly #endpoint: Deno.QuicEndpoint;
  readonly #log: (msg: string, props: Record<string, unknown>) => void;
  readonly #limits: ServerLimits;
  readonly #admission: Admission;
  readonly #revocations?: Revocations;
  #listener?: Deno.QuicListener;
  #recheck?: ReturnType<typeof setInterval>;
  readonly #conns = new Set<Deno.QuicConn>();
  readonly #peers = new Map<Deno.QuicConn, PeerIdentity>();
  #selfIdentity?: Promise<PeerIdentity>;
  /** Connections refused at admission or authentication (for metrics and tests). */
  refused = 0;

  constructor(
    identity: Identity,
    handlers: Record<string, RpcHandler>,
    addr: { hostname: string; port: number },
    log: (msg: string, props: Record<string, unknown>) => void = () => {},
    access?: AccessPolicy,
    opts: ServerOptions = {},
  ) {
    this.#identity = identity;
    this.#dispatcher = new Dispatcher(
      handlers,
      access,
      (r) => log("refused {method} to {peer}: role {role} may not call it", r),
      { maxMs: MAX_DEADLINE_MS, longer: opts.channels },
    );
    this.#endpoint = new Deno.QuicEndpoint(addr);
    this.#log = log;
    this.#limits = { ...DEFAULT_LIMITS, ...opts.limits };
    this.#admission = new Admission(this.#limits);
    this.#revocations = opts.revocations;
  }

  /** Authenticated peers connected now. */
  peers(): string[] {
    return [...new Set([...this.#peers.values()].map((p) => p.host))].sort();
  }

  /** The bound address. */
  get addr(): { hostname: string; port: number } {
    return this.#endpoint.addr;
  }

  /** Starts accepting connections, and re-checking connected peers' certificates. */
  start(): void {
    const listener = this.#endpoint.listen({
      cert: this.#identity.certPem,
      key: this.#identity.keyPem,
      alpnProtocols: [ALPN],
    });
    this.#listener = listener;
    void (async () => {
      for await (const incoming of listener) this.#admit(incoming);
    })().catch(() => {
      // The listener was stopped.
    });
    const timer = setInterval(() => void this.recheck(), this.#limits.recheckMs);
    Deno.unrefTimer(timer);
    this.#recheck = timer;
  }

  /**
   * Re-reads the CRL if it changed and closes every connection whose peer's certificate expired or
   * was revoked since it authenticated: page channels live for days, longer than a revocation may
   * wait. Runs every `recheckMs`; returns the number closed.
   */
  async recheck(now = new Date()): Promise<number> {
    await this.#revocations?.refresh().catch((e) =>
      this.#log("cannot re-read the CRL: {reason}", { reason: (e as Error).message })
    );
    let cut = 0;
    for (const [conn, peer] of this.#peers) {
      const why = this.#unfit(peer, now);
      if (!why) continue;
      this.#log("closing the connection of {peer}: {reason}", { peer: peer.host, reason: why });
      this.#peers.delete(conn);
      conn.close({ closeCode: 2, reason: why.slice(0, 100) });
      cut++;
    }
    return cut;
  }

  /** Why `peer`'s certificate no longer admits it, or undefined. */
  #unfit(peer: PeerIdentity, now: Date): string | undefined {
    if (now > peer.notAfter) return `certificate expired on ${peer.notAfter.toISOString()}`;
    const at = this.#revocations?.revoked(peer.serial);
    if (at) return `certificate ${peer.serial} revoked on ${at.toISOString()}`;
    return undefined;
  }

  /** Counts a new connection as a handshake under way, or refuses it at once. */
  #admit(incoming: Deno.QuicIncoming): void {
    const refusal = this.#admission.begin();
    if (refusal) {
      this.refused++;
      incoming.refuse();
      this.#log("refused a connection: {reason}", { reason: refusal });
      return;
    }
    let authenticating = true;
    const done = () => {
      if (authenticating) this.#admission.authenticated();
      authenticating = false;
    };
    void this.#accept(incoming, done).catch(() => {
      // A connection that failed before or during authentication: nothing to serve.
    }).finally(done);
  }

  async #accept(incoming: Deno.QuicIncoming, authenticated: () => void) {
    const conn = await incoming.accept();
    const address = conn.remoteAddr.hostname;
    const refusal = this.#admission.address(address);
    if (refusal) {
      this.refused++;
      this.#log("refused a connection: {reason}", { reason: refusal });
      conn.close({ closeCode: 3, reason: "too many connections from this address" });
      return;
    }
    this.#conns.add(conn);
    conn.closed.finally(() => {
      this.#conns.delete(conn);
      this.#peers.delete(conn);
      this.#admission.closed(address);
    }).catch(() => {
      // Closed with an error code: it is gone either way.
    });
    const streams = conn.incomingBidirectionalStreams.getReader();
    let peer: PeerIdentity & { role: Role };
    try {
      peer = await withTimeout(
        this.#authenticate(streams),
        this.#limits.handshakeTimeoutMs,
        "authentication",
      );
    } catch (e) {
      authenticated();
      this.refused++;
      this.#log("refused {addr}: {reason}", {
        addr: formatHostPort(conn.remoteAddr),
        reason: (e as Error).message,
      });
      // Let the refusal reach the client before the connection goes.
      setTimeout(() => conn.close({ closeCode: 1, reason: "unauthenticated" }), 200);
      return;
    }
    authenticated();
    this.#peers.set(conn, peer);
    // A call holds a slot until it ends; while all are held, further streams wait unread.
    const slots = new Slots(this.#limits.streamsPerConnection);
    for (;;) {
      await slots.acquire();
      const { value: stream, done } = await streams.read();
      if (done) break;
      void serveFramedCalls(
        stream,
        this.#dispatcher,
        { peer: peer.host, role: peer.role, via: "quic" },
        false,
      ).catch(() => {
        // The stream broke under the call; the caller sees its connection fail.
      }).finally(() => slots.release());
    }
  }

  async #authenticate(
    streams: ReadableStreamDefaultReader<Deno.QuicBidirectionalStream>,
  ): Promise<PeerIdentity & { role: Role }> {
    const { value: stream, done } = await streams.read();
    if (done) throw new RpcError("unauthenticated", "connection closed before authenticating");
    const writer = stream.writable.getWriter();
    const reader = new FrameReader(stream.readable, AUTH_LIMITS);
    const fail = async (reason: string): Promise<never> => {
      await writer.write(
        encodeControl({
          v: RPC_VERSION,
          ok: false,
          error: { code: "unauthenticated", message: reason },
        }),
      ).catch(() => {
        // The client left; the refusal is logged all the same.
      });
      await writer.close().catch(() => {
        // The client left first.
      });
      throw new RpcError("unauthenticated", reason);
    };
    // A QUIC stream reaches the peer only with its first bytes, so the client speaks first.
    const hello = await reader.message();
    if (!hello || hello.hello !== RPC_VERSION) {
      return fail("the client did not open with a dcres hello");
    }
    if (hello.proof !== PROOF_VERSION) {
      return fail(
        `the client does not give a peer proof of version ${PROOF_VERSION}; upgrade its dcres`,
      );
    }
    const { nonce: clientNonce, cert, dialed } = hello;
    if (
      !(clientNonce instanceof Uint8Array) || clientNonce.length !== NONCE_BYTES ||
      typeof cert !== "string" || typeof dialed !== "string" || dialed.length > 300
    ) {
      return fail("the client's hello lacks its nonce, certificate or the address it dialed");
    }
    const client = await verifyPeerCertificate(cert, this.#identity.caPem);
    if (!client.ok) return fail(`client certificate refused: ${client.reason}`);
    const revoked = this.#revocations?.revoked(client.serial);
    if (revoked) {
      return fail(
        `client certificate of ${client.host} (serial ${client.serial}) was revoked on ${revoked.toISOString()}`,
      );
    }
    if (!client.role) {
      return fail(
        `client certificate of ${client.host} states no role; issue it again with dcres ca issue --role`,
      );
    }
    const self = await this.#self();
    if (!answersTo(self.names, dialed)) {
      return fail(
        `the client dialed ${dialed}, which this agent (${
          self.names.join(", ")
        }) does not answer to`,
      );
    }
    const t: Transcript = {
      clientNonce,
      serverNonce: crypto.getRandomValues(new Uint8Array(NONCE_BYTES)),
      clientCert: client.sha256,
      serverCert: self.sha256,
      dialed,
    };
    await writer.write(encodeControl({
      v: RPC_VERSION,
      nonce: t.serverNonce,
      cert: this.#identity.certPem,
      sig: await signWithKey(this.#identity.keyPem, proofBytes("server", t)),
    }));
    const m = await reader.message();
    if (!m || !(m.sig instanceof Uint8Array)) return fail("the client gave no proof");
    if (!await verifyWithCertificate(cert, proofBytes("client", t), new Uint8Array(m.sig))) {
      return fail("the client's proof does not verify: it does not hold its key, or was relayed");
    }
    await writer.write(encodeControl({ v: RPC_VERSION, ok: true }));
    await writer.close();
    return { ...client, role: client.role };
  }

  /** This agent's own certificate as peers see it (checked once against its CA). */
  #self(): Promise<PeerIdentity> {
    return this.#selfIdentity ??= (async () => {
      const v = await verifyPeerCertificate(this.#identity.certPem, this.#identity.caPem);
      if (!v.ok) throw new IdentityError(`this agent's own certificate is refused: ${v.reason}`);
      return v;
    })();
  }

  /** Stops accepting and closes every connection. */
  close(): void {
    try {
      this.#listener?.stop();
    } catch {
      // Already stopped.
    }
    clearInterval(this.#recheck);
    for (const c of this.#conns) c.close();
    this.#endpoint.close();
  }
}

/** An authenticated client connection to one agent. */
export class RpcClient {
  private nextId = 1;

  private constructor(
    private readonly conn: Deno.QuicConn,
    /** The agent's host name. */ readonly host: string,
  ) {}

  /**
   * Connects to `addr` ("host:port"); the agent proves it is the cluster's agent at that address,
   * and we prove our identity (src/net/peer_proof.ts).
   */
  static async connect(
    addr: string,
    identity: Identity,
    serverName?: string,
    transport: Deno.QuicTransportOptions = { keepAliveInterval: 5000 },
  ): Promise<RpcClient> {
    let at: HostPort;
    try {
      at = parseHostPort(addr);
    } catch (e) {
      throw new ConfigError(`agent address ${(e as Error).message}`);
    }
    const { hostname, port } = at;
    let conn: Deno.QuicConn;
    try {
      conn = await withTimeout(
        Promise.resolve(Deno.connectQuic({
          hostname,
          port,
          alpnProtocols: [ALPN],
          caCerts: [identity.caPem],
          serverName: serverName ?? hostname,
          ...transport,
        })),
        AUTH_TIMEOUT_MS,
        `connecting to the agent at ${addr}`,
      );
    } catch (e) {
      throw new RpcError(
        "unauthenticated",
        `cannot reach the agent at ${addr}: ${(e as Error).message}`,
      );
    }
    try {
      return new RpcClient(conn, await proveToAgent(conn, addr, identity));
    } catch (e) {
      // An agent that turns a connection away (too many from this address) says why as it closes.
      const info = await within(conn.closed.catch(() => undefined), 100);
      conn.close();
      if (info?.reason) {
        throw new RpcError("unauthenticated", `the agent at ${addr} refused us: ${info.reason}`);
      }
      if (e instanceof RpcError) throw e;
      throw new RpcError(
        "unauthenticated",
        `the agent at ${addr} refused us: ${(e as Error).message}`,
      );
    }
  }

  /** Calls `method`; rejects with RpcError on a typed error, a deadline or cancellation. */
  async call<T>(
    method: string,
    args: Record<string, unknown> = {},
    opts: CallOptions = {},
  ): Promise<T> {
    const id = this.nextId++;
    return await callOnStream<T>(
      await this.conn.createBidirectionalStream(),
      id,
      method,
      args,
      opts,
    );
  }

  /** Closes the connection. */
  /**
   * Closes the connection; the promise settles once the close is sent (or after a second), so a
   * process that exits next does not leave the agent counting a connection until it times out.
   */
  async close(): Promise<void> {
    this.conn.close();
    await within(this.conn.closed.catch(() => undefined), 1000);
  }
}

/**
 * The client's side of the peer proof on a new connection: our hello, the agent's proof checked
 * (its certificate from the cluster CA, an agent's, naming `addr`; its signature over the
 * transcript), then ours. Returns the agent's host name as its certificate states it.
 */
async function proveToAgent(
  conn: Deno.QuicConn,
  addr: string,
  identity: Identity,
): Promise<string> {
  const stream = await conn.createBidirectionalStream();
  const writer = stream.writable.getWriter();
  const reader = new FrameReader(stream.readable, AUTH_LIMITS);
  const clientNonce = crypto.getRandomValues(new Uint8Array(NONCE_BYTES));
  await writer.write(encodeControl({
    v: RPC_VERSION,
    hello: RPC_VERSION,
    proof: PROOF_VERSION,
    nonce: clientNonce,
    cert: identity.certPem,
    dialed: addr,
  }));
  const refused = (reason: string) =>
    new RpcError("unauthenticated", `the agent at ${addr} refused us: ${reason}`);
  const proof = await withTimeout(reader.message(), AUTH_TIMEOUT_MS, "the agent's proof");
  if (!proof) throw refused("no answer");
  if (proof.ok === false) {
    throw refused((proof.error as { message?: string } | undefined)?.message ?? "no reason given");
  }
  const { nonce: serverNonce, cert, sig } = proof;
  if (
    !(serverNonce instanceof Uint8Array) || serverNonce.length !== NONCE_BYTES ||
    typeof cert !== "string" || !(sig instanceof Uint8Array)
  ) {
    throw refused("its proof lacks its nonce, certificate or signature");
  }
  const fake = (why: string) =>
    new RpcError(
      "unauthenticated",
      `the server at ${addr} is not the cluster's agent there: ${why}`,
    );
  const server = await verifyPeerCertificate(cert, identity.caPem);
  if (!server.ok) throw fake(`its certificate is refused: ${server.reason}`);
  const mismatch = serverMismatch(server, addr);
  if (mismatch) throw fake(`it ${mismatch}`);
  if (identity.crlPem) {
    const crl = await readCrl(identity.crlPem, identity.caPem, "our ca.crl");
    const at = crl.revoked.get(serialKey(server.serial));
    if (at) {
      throw fake(`its certificate (serial ${server.serial}) was revoked on ${at.toISOString()}`);
    }
  }
  const ours = await verifyPeerCertificate(identity.certPem, identity.caPem);
  if (!ours.ok) throw new IdentityError(`our own certificate is refused: ${ours.reason}`);
  const t: Transcript = {
    clientNonce,
    serverNonce,
    clientCert: ours.sha256,
    serverCert: server.sha256,
    dialed: addr,
  };
  if (!await verifyWithCertificate(cert, proofBytes("server", t), new Uint8Array(sig))) {
    throw fake("its proof does not verify (it does not hold its key, or relayed another's)");
  }
  await writer.write(encodeControl({
    v: RPC_VERSION,
    sig: await signWithKey(identity.keyPem, proofBytes("client", t)),
  }));
  const verdict = await withTimeout(reader.message(), AUTH_TIMEOUT_MS, "the agent's verdict");
  if (!verdict?.ok) {
    throw refused((verdict?.error as { message?: string } | undefined)?.message ?? "no answer");
  }
  await writer.close().catch(() => {
    // The agent closed the authentication stream first.
  });
  return server.host;
}
