/**
 * RPC over QUIC (ALPN dcres/1) between agents and clients. Deno's QUIC server cannot ask for or check
 * client certificates, so mutual authentication is the first exchange on every connection, before
 * any request is read: the server sends a random challenge, the client answers with its host
 * certificate and a signature over the challenge with its key, and the server checks that the cluster
 * CA issued the certificate and that the signature matches it. Then each request is one
 * bidirectional stream: a request frame, optional progress frames, one reply frame.
 */
import { decodeCbor } from "../ckpt/cbor.ts";
import { encodeControl, encodeFrame, FrameDecoder, FrameError, FrameKind } from "./frame.ts";
import { Inbox } from "./inbox.ts";
import {
  type Identity,
  signWithKey,
  verifyPeerCertificate,
  verifyWithCertificate,
} from "./identity.ts";
import {
  parseRequest,
  RPC_VERSION,
  RpcError,
  type RpcErrorCode,
  type RpcReply,
} from "./rpc_messages.ts";

/** ALPN of the dcres protocol. */
export const ALPN = "dcres/1";
const AUTH_CONTEXT = new TextEncoder().encode("dcres-auth-v1:");
const AUTH_TIMEOUT_MS = 10_000;

/** What a handler gets besides its arguments. */
export interface RpcContext {
  /** The authenticated peer's host name ("local" on the unix socket). */
  peer: string;
  /** Aborted when the caller cancels, goes away or the deadline passes. */
  signal: AbortSignal;
  /** Sends an interim progress message. */
  progress: (p: unknown) => void;
  /** DATA frames the caller sends on this request's stream, until it ends its upload. */
  data: AsyncIterable<Uint8Array>;
  /** Sends one DATA frame to the caller; resolves when the transport took it (backpressure). */
  send: (bytes: Uint8Array) => Promise<void>;
}

/** A method handler. */
export type RpcHandler = (args: Record<string, unknown>, ctx: RpcContext) => Promise<unknown>;

/** Options of one call. */
export interface CallOptions {
  /** Milliseconds the agent may take (default 10 min). */
  deadlineMs?: number;
  /** Receives progress messages. */
  onProgress?: (p: unknown) => void;
  /** Receives the handler's DATA frames. */
  onData?: (bytes: Uint8Array) => void;
  /** Sent to the handler as DATA frames, then the end of the upload. */
  upload?: AsyncIterable<Uint8Array>;
  /** Cancels the call: the agent is told, and the call rejects with code "cancelled". */
  signal?: AbortSignal;
}

/** A promise that rejects with RpcError("cancelled") when `signal` aborts. */
function rejectOnAbort(signal: AbortSignal | undefined): Promise<never> {
  return new Promise((_, rej) => {
    const fail = () =>
      rej(
        signal!.reason instanceof RpcError
          ? signal!.reason
          : new RpcError("cancelled", "the call was cancelled"),
      );
    if (signal?.aborted) fail();
    else signal?.addEventListener("abort", fail, { once: true });
  });
}

async function readFrame(
  reader: ReadableStreamDefaultReader<Uint8Array>,
  dec: FrameDecoder,
  queue: Array<{ kind: number; payload: Uint8Array }>,
) {
  while (queue.length === 0) {
    const { value, done } = await reader.read();
    if (done) {
      dec.end();
      return undefined;
    }
    queue.push(...dec.push(value));
  }
  return queue.shift();
}

async function readMessage(
  reader: ReadableStreamDefaultReader<Uint8Array>,
  dec: FrameDecoder,
  queue: Array<{ kind: number; payload: Uint8Array }>,
): Promise<Record<string, unknown> | undefined> {
  const f = await readFrame(reader, dec, queue);
  if (!f) return undefined;
  if (f.kind !== FrameKind.CONTROL) throw new FrameError("bad-kind", "expected a control frame");
  const m = decodeCbor(f.payload);
  if (typeof m !== "object" || m === null) {
    throw new RpcError("bad-request", "message is not a map");
  }
  return m as Record<string, unknown>;
}

function withTimeout<T>(
  p: Promise<T>,
  ms: number,
  what: string,
  onTimeout?: (e: RpcError) => void,
): Promise<T> {
  let t: ReturnType<typeof setTimeout>;
  return Promise.race([
    p,
    new Promise<T>((_, rej) =>
      t = setTimeout(() => {
        const e = new RpcError("deadline-exceeded", `${what} timed out after ${ms} ms`);
        onTimeout?.(e);
        rej(e);
      }, ms)
    ),
  ]).finally(() => clearTimeout(t));
}

/**
 * Reads what the caller sends after its request: DATA frames into `inbox`, then the end of its
 * upload; a cancel frame, a broken stream or bad frames abort the handler.
 */
async function pumpInbound(
  reader: ReadableStreamDefaultReader<Uint8Array>,
  dec: FrameDecoder,
  queue: Array<{ kind: number; payload: Uint8Array }>,
  id: number,
  inbox: Inbox,
  abort: AbortController,
) {
  try {
    for (;;) {
      const f = await readFrame(reader, dec, queue);
      if (!f) return inbox.end();
      if (f.kind === FrameKind.DATA) {
        inbox.push(f.payload);
        continue;
      }
      const m = parseRequest(f.payload);
      if ("eod" in m && m.eod === id) inbox.end();
      if ("cancel" in m && m.cancel === id) {
        const e = new RpcError("cancelled", "the caller cancelled the call");
        inbox.end(e);
        return abort.abort(e);
      }
    }
  } catch (e) {
    const err = e instanceof RpcError ? e : new RpcError("cancelled", (e as Error).message);
    inbox.end(err);
    abort.abort(err);
  }
}

/** A QUIC RPC server with mutual authentication. */
export class RpcServer {
  private readonly endpoint: Deno.QuicEndpoint;
  private listener?: Deno.QuicListener;
  private readonly conns = new Set<Deno.QuicConn>();
  /** Connections refused at authentication (for metrics and tests). */
  refused = 0;
  private readonly peerNames = new Map<Deno.QuicConn, string>();

  /** Authenticated peers connected now. */
  peers(): string[] {
    return [...new Set(this.peerNames.values())].sort();
  }

  constructor(
    private readonly identity: Identity,
    private readonly handlers: Record<string, RpcHandler>,
    addr: { hostname: string; port: number },
    private readonly log: (msg: string, props: Record<string, unknown>) => void = () => {},
  ) {
    this.endpoint = new Deno.QuicEndpoint(addr);
  }

  private self?: Promise<string>;

  private selfName(): Promise<string> {
    return this.self ??= verifyPeerCertificate(this.identity.certPem, this.identity.caPem).then((
      v,
    ) => v.ok ? v.host : "agent");
  }

  /** The bound address. */
  get addr(): { hostname: string; port: number } {
    return this.endpoint.addr;
  }

  /** Starts accepting connections. */
  start(): void {
    this.listener = this.endpoint.listen({
      cert: this.identity.certPem,
      key: this.identity.keyPem,
      alpnProtocols: [ALPN],
    });
    void (async () => {
      for await (const incoming of this.listener!) void this.accept(incoming).catch(() => {});
    })().catch(() => {});
  }

  private async accept(incoming: Deno.QuicIncoming) {
    const conn = await incoming.accept();
    this.conns.add(conn);
    conn.closed.finally(() => this.conns.delete(conn)).catch(() => {});
    const streams = conn.incomingBidirectionalStreams.getReader();
    let peer: string;
    try {
      peer = await withTimeout(this.authenticate(streams), AUTH_TIMEOUT_MS, "authentication");
    } catch (e) {
      this.refused++;
      this.log("refused {addr}: {reason}", {
        addr: `${conn.remoteAddr.hostname}:${conn.remoteAddr.port}`,
        reason: (e as Error).message,
      });
      // Let the refusal reach the client before the connection goes.
      setTimeout(() => conn.close({ closeCode: 1, reason: "unauthenticated" }), 200);
      return;
    }
    this.peerNames.set(conn, peer);
    conn.closed.finally(() => this.peerNames.delete(conn)).catch(() => {});
    for (;;) {
      const { value: stream, done } = await streams.read();
      if (done) break;
      void this.serveStream(stream, peer).catch(() => {});
    }
  }

  private async authenticate(
    streams: ReadableStreamDefaultReader<Deno.QuicBidirectionalStream>,
  ): Promise<string> {
    const { value: stream, done } = await streams.read();
    if (done) throw new RpcError("unauthenticated", "connection closed before authenticating");
    const writer = stream.writable.getWriter();
    const reader = stream.readable.getReader();
    const dec = new FrameDecoder({ [FrameKind.CONTROL]: 16 << 10, [FrameKind.DATA]: 0 });
    const queue: Array<{ kind: number; payload: Uint8Array }> = [];
    // A QUIC stream reaches the peer only with its first bytes, so the client speaks first.
    const hello = await readMessage(reader, dec, queue);
    if (!hello || hello.hello !== RPC_VERSION) {
      throw new RpcError("unauthenticated", "the client did not open with a dcres hello");
    }
    const challenge = crypto.getRandomValues(new Uint8Array(32));
    await writer.write(encodeControl({ v: RPC_VERSION, challenge }));
    const m = await readMessage(reader, dec, queue);
    const fail = async (reason: string): Promise<never> => {
      await writer.write(
        encodeControl({
          v: RPC_VERSION,
          ok: false,
          error: { code: "unauthenticated", message: reason },
        }),
      ).catch(() => {});
      await writer.close().catch(() => {});
      throw new RpcError("unauthenticated", reason);
    };
    if (!m || typeof m.cert !== "string" || !(m.sig instanceof Uint8Array)) {
      return fail("no client certificate presented");
    }
    const verdict = await verifyPeerCertificate(m.cert, this.identity.caPem);
    if (!verdict.ok) return fail(`client certificate refused: ${verdict.reason}`);
    const signed = new Uint8Array([...AUTH_CONTEXT, ...challenge]);
    if (!await verifyWithCertificate(m.cert, signed, new Uint8Array(m.sig))) {
      return fail("client does not hold the key of its certificate");
    }
    await writer.write(encodeControl({ v: RPC_VERSION, ok: true, host: await this.selfName() }));
    await writer.close();
    return verdict.host;
  }

  private async serveStream(stream: Deno.QuicBidirectionalStream, peer: string) {
    const writer = stream.writable.getWriter();
    const reader = stream.readable.getReader();
    const dec = new FrameDecoder();
    const queue: Array<{ kind: number; payload: Uint8Array }> = [];
    const reply = (r: RpcReply) => writer.write(encodeControl(r));
    let id = -1;
    const abort = new AbortController();
    try {
      const f = await readFrame(reader, dec, queue);
      if (!f) return;
      const req = parseRequest(f.payload);
      if (!("method" in req)) return;
      id = req.id;
      const h = this.handlers[req.method];
      if (!h) throw new RpcError("unknown-method", `unknown method "${req.method}"`);
      const inbox = new Inbox();
      void pumpInbound(reader, dec, queue, id, inbox, abort);
      const result = await withTimeout(
        Promise.race([
          h(req.args, {
            peer,
            signal: abort.signal,
            progress: (p) =>
              void writer.write(encodeControl({ v: RPC_VERSION, id, progress: p })).catch(() => {}),
            data: inbox,
            send: (b) => writer.write(encodeFrame(FrameKind.DATA, b)),
          }),
          rejectOnAbort(abort.signal),
        ]),
        req.deadlineMs,
        req.method,
        (e) => abort.abort(e),
      );
      await reply({ v: RPC_VERSION, id, ok: true, result });
    } catch (e) {
      const code: RpcErrorCode = e instanceof RpcError
        ? e.code
        : e instanceof FrameError
        ? "bad-request"
        : "failed";
      await reply({ v: RPC_VERSION, id, ok: false, error: { code, message: (e as Error).message } })
        .catch(() => {});
    } finally {
      abort.abort();
      await writer.close().catch(() => {});
    }
  }

  /** Stops accepting and closes every connection. */
  close(): void {
    try {
      this.listener?.stop();
    } catch {
      // Already stopped.
    }
    for (const c of this.conns) c.close();
    this.endpoint.close();
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
    if (!m) throw new RpcError("bad-request", `agent address "${addr}" is not HOST:PORT`);
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
      const reader = stream.readable.getReader();
      const dec = new FrameDecoder({ [FrameKind.CONTROL]: 16 << 10, [FrameKind.DATA]: 0 });
      const queue: Array<{ kind: number; payload: Uint8Array }> = [];
      await writer.write(encodeControl({ v: RPC_VERSION, hello: RPC_VERSION }));
      const hello = await withTimeout(
        readMessage(reader, dec, queue),
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
        readMessage(reader, dec, queue),
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
      await writer.close().catch(() => {});
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
    const deadlineMs = opts.deadlineMs ?? 600_000;
    const stream = await this.conn.createBidirectionalStream();
    const writer = stream.writable.getWriter();
    const reader = stream.readable.getReader();
    await writer.write(encodeControl({ v: RPC_VERSION, id, method, deadlineMs, args }));
    const cancel = () =>
      void writer.write(encodeControl({ v: RPC_VERSION, cancel: id })).catch(() => {});
    opts.signal?.addEventListener("abort", cancel, { once: true });
    if (opts.upload) {
      const upload = opts.upload;
      void (async () => {
        for await (const b of upload) await writer.write(encodeFrame(FrameKind.DATA, b));
        await writer.write(encodeControl({ v: RPC_VERSION, eod: id }));
      })().catch(cancel);
    }
    const dec = new FrameDecoder();
    const queue: Array<{ kind: number; payload: Uint8Array }> = [];
    const answer = async (): Promise<T> => {
      for (;;) {
        const f = await readFrame(reader, dec, queue);
        if (!f) {
          throw new RpcError("failed", `the agent closed the stream without answering ${method}`);
        }
        if (f.kind === FrameKind.DATA) {
          opts.onData?.(f.payload);
          continue;
        }
        const m = decodeCbor(f.payload) as Record<string, unknown>;
        if ("progress" in m) {
          opts.onProgress?.(m.progress);
          continue;
        }
        if (m.ok) return m.result as T;
        const err = m.error as { code: RpcErrorCode; message: string };
        throw new RpcError(err.code, err.message);
      }
    };
    try {
      return await withTimeout(
        Promise.race([answer(), rejectOnAbort(opts.signal)]),
        deadlineMs + 5000,
        method,
        cancel,
      );
    } finally {
      opts.signal?.removeEventListener("abort", cancel);
      await writer.close().catch(() => {});
    }
  }

  /** Closes the connection. */
  close(): void {
    this.conn.close();
  }
}
