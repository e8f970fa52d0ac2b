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
import { withTimeout } from "../rpc/deadline.ts";
import { ConfigError, RpcError } from "../rpc/errors.ts";
import { encodeControl, FrameKind } from "./frame.ts";
import { FrameReader } from "./frame_reader.ts";
import {
  type Identity,
  signWithKey,
  verifyPeerCertificate,
  verifyWithCertificate,
} from "./identity.ts";
import { RPC_VERSION } from "./rpc_messages.ts";
import { callOnStream, type CallOptions } from "./stream_call.ts";
import { serveFramedCalls } from "./stream_serve.ts";

/** ALPN of the dcres protocol. */
export const ALPN = "dcres/1";
const AUTH_CONTEXT = new TextEncoder().encode("dcres-auth-v1:");
const AUTH_TIMEOUT_MS = 10_000;
/** Frame limits while authenticating: small control messages, no DATA. */
const AUTH_LIMITS = { [FrameKind.CONTROL]: 16 << 10, [FrameKind.DATA]: 0 };

/** A QUIC RPC server with mutual authentication. */
export class RpcServer {
  readonly #identity: Identity;
  readonly #dispatcher: Dispatcher;
  readonly #endpoint: Deno.QuicEndpoint;
  readonly #log: (msg: string, props: Record<string, unknown>) => void;
  #listener?: Deno.QuicListener;
  readonly #conns = new Set<Deno.QuicConn>();
  readonly #peerNames = new Map<Deno.QuicConn, string>();
  #self?: Promise<string>;
  /** Connections refused at authentication (for metrics and tests). */
  refused = 0;

  constructor(
    identity: Identity,
    handlers: Record<string, RpcHandler>,
    addr: { hostname: string; port: number },
    log: (msg: string, props: Record<string, unknown>) => void = () => {},
  ) {
    this.#identity = identity;
    this.#dispatcher = new Dispatcher(handlers);
    this.#endpoint = new Deno.QuicEndpoint(addr);
    this.#log = log;
  }

  /** Authenticated peers connected now. */
  peers(): string[] {
    return [...new Set(this.#peerNames.values())].sort();
  }

  #selfName(): Promise<string> {
    return this.#self ??= verifyPeerCertificate(this.#identity.certPem, this.#identity.caPem)
      .then((v) => v.ok ? v.host : "agent");
  }

  /** The bound address. */
  get addr(): { hostname: string; port: number } {
    return this.#endpoint.addr;
  }

  /** Starts accepting connections. */
  start(): void {
    const listener = this.#endpoint.listen({
      cert: this.#identity.certPem,
      key: this.#identity.keyPem,
      alpnProtocols: [ALPN],
    });
    this.#listener = listener;
    void (async () => {
      for await (const incoming of listener) {
        void this.#accept(incoming).catch(() => {
          // A connection that failed before or during authentication: nothing to serve.
        });
      }
    })().catch(() => {
      // The listener was stopped.
    });
  }

  async #accept(incoming: Deno.QuicIncoming) {
    const conn = await incoming.accept();
    this.#conns.add(conn);
    conn.closed.finally(() => this.#conns.delete(conn)).catch(() => {
      // Closed with an error code: it is gone either way.
    });
    const streams = conn.incomingBidirectionalStreams.getReader();
    let peer: string;
    try {
      peer = await withTimeout(this.#authenticate(streams), AUTH_TIMEOUT_MS, "authentication");
    } catch (e) {
      this.refused++;
      this.#log("refused {addr}: {reason}", {
        addr: `${conn.remoteAddr.hostname}:${conn.remoteAddr.port}`,
        reason: (e as Error).message,
      });
      // Let the refusal reach the client before the connection goes.
      setTimeout(() => conn.close({ closeCode: 1, reason: "unauthenticated" }), 200);
      return;
    }
    this.#peerNames.set(conn, peer);
    conn.closed.finally(() => this.#peerNames.delete(conn)).catch(() => {
      // Closed with an error code: it is gone either way.
    });
    for (;;) {
      const { value: stream, done } = await streams.read();
      if (done) break;
      void serveFramedCalls(stream, this.#dispatcher, { peer, via: "quic" }, false).catch(() => {
        // The stream broke under the call; the caller sees its connection fail.
      });
    }
  }

  async #authenticate(
    streams: ReadableStreamDefaultReader<Deno.QuicBidirectionalStream>,
  ): Promise<string> {
    const { value: stream, done } = await streams.read();
    if (done) throw new RpcError("unauthenticated", "connection closed before authenticating");
    const writer = stream.writable.getWriter();
    const reader = new FrameReader(stream.readable, AUTH_LIMITS);
    // A QUIC stream reaches the peer only with its first bytes, so the client speaks first.
    const hello = await reader.message();
    if (!hello || hello.hello !== RPC_VERSION) {
      throw new RpcError("unauthenticated", "the client did not open with a dcres hello");
    }
    const challenge = crypto.getRandomValues(new Uint8Array(32));
    await writer.write(encodeControl({ v: RPC_VERSION, challenge }));
    const m = await reader.message();
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
    if (!m || typeof m.cert !== "string" || !(m.sig instanceof Uint8Array)) {
      return fail("no client certificate presented");
    }
    const verdict = await verifyPeerCertificate(m.cert, this.#identity.caPem);
    if (!verdict.ok) return fail(`client certificate refused: ${verdict.reason}`);
    const signed = new Uint8Array([...AUTH_CONTEXT, ...challenge]);
    if (!await verifyWithCertificate(m.cert, signed, new Uint8Array(m.sig))) {
      return fail("client does not hold the key of its certificate");
    }
    await writer.write(encodeControl({ v: RPC_VERSION, ok: true, host: await this.#selfName() }));
    await writer.close();
    return verdict.host;
  }

  /** Stops accepting and closes every connection. */
  close(): void {
    try {
      this.#listener?.stop();
    } catch {
      // Already stopped.
    }
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

  /** Connects to `addr` ("host:port"), checks the agent's certificate and proves ours. */
  static async connect(
    addr: string,
    identity: Identity,
    serverName?: string,
    transport: Deno.QuicTransportOptions = { keepAliveInterval: 5000 },
  ): Promise<RpcClient> {
    const m = /^(.+):(\d+)$/.exec(addr);
    if (!m) {
      throw new ConfigError(
        `agent address "${addr}" is not HOST:PORT; give it as e.g. 127.0.0.1:7400 or [::1]:7400`,
      );
    }
    const hostname = m[1].replace(/^\[|\]$/g, "");
    let conn: Deno.QuicConn;
    try {
      conn = await withTimeout(
        Promise.resolve(Deno.connectQuic({
          hostname,
          port: Number(m[2]),
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
      const stream = await conn.createBidirectionalStream();
      const writer = stream.writable.getWriter();
      const reader = new FrameReader(stream.readable, AUTH_LIMITS);
      await writer.write(encodeControl({ v: RPC_VERSION, hello: RPC_VERSION }));
      const hello = await withTimeout(
        reader.message(),
        AUTH_TIMEOUT_MS,
        "the agent's challenge",
      );
      if (!hello || !(hello.challenge instanceof Uint8Array)) {
        throw new RpcError("unauthenticated", "the agent sent no challenge");
      }
      const sig = await signWithKey(
        identity.keyPem,
        new Uint8Array([...AUTH_CONTEXT, ...hello.challenge]),
      );
      await writer.write(encodeControl({ v: RPC_VERSION, cert: identity.certPem, sig }));
      const verdict = await withTimeout(
        reader.message(),
        AUTH_TIMEOUT_MS,
        "the agent's verdict",
      );
      if (!verdict?.ok) {
        const err = verdict?.error as { message?: string } | undefined;
        throw new RpcError(
          "unauthenticated",
          `the agent at ${addr} refused us: ${err?.message ?? "no answer"}`,
        );
      }
      await writer.close().catch(() => {
        // The agent closed the authentication stream first.
      });
      return new RpcClient(conn, String(verdict.host));
    } catch (e) {
      conn.close();
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
  close(): void {
    this.conn.close();
  }
}
