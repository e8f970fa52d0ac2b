/**
 * The agent's RPC on a unix socket for the CLI on the same host: the same frames and methods as over
 * QUIC; access is the socket file's permissions (0600), as for any local daemon.
 */
import { decodeCbor } from "../ckpt/cbor.ts";
import { encodeControl, FrameDecoder } from "../net/frame.ts";
import type { RpcHandler } from "../net/quic.ts";
import { parseRequest, RPC_VERSION, RpcError, type RpcErrorCode } from "../net/rpc_messages.ts";

/** Serves `handlers` on a unix socket. */
export class LocalRpcServer {
  private readonly listener: Deno.UnixListener;

  constructor(readonly path: string, private readonly handlers: Record<string, RpcHandler>) {
    try {
      Deno.removeSync(path);
    } catch {
      // No stale socket.
    }
    const listener = Deno.listen({ transport: "unix", path });
    this.listener = listener;
    Deno.chmodSync(path, 0o600);
    void (async () => {
      for await (const conn of listener) {
        void this.serve(conn).catch(() => {}).finally(() => safeClose(conn));
      }
    })().catch(() => {});
  }

  private async serve(conn: Deno.UnixConn) {
    const dec = new FrameDecoder();
    const w = conn.writable.getWriter();
    for await (const chunk of conn.readable) {
      for (const f of dec.push(chunk)) {
        let id = -1;
        try {
          const req = parseRequest(f.payload);
          if (!("method" in req)) continue;
          id = req.id;
          const h = this.handlers[req.method];
          if (!h) throw new RpcError("unknown-method", `unknown method "${req.method}"`);
          const result = await h(req.args, {
            peer: "local",
            signal: new AbortController().signal,
            progress: (p) =>
              void w.write(encodeControl({ v: RPC_VERSION, id, progress: p })).catch(() => {}),
            data: noData(),
            send: () =>
              Promise.reject(
                new RpcError("bad-request", "the local socket carries no data frames"),
              ),
          });
          await w.write(encodeControl({ v: RPC_VERSION, id, ok: true, result }));
        } catch (e) {
          const code: RpcErrorCode = e instanceof RpcError ? e.code : "failed";
          await w.write(
            encodeControl({
              v: RPC_VERSION,
              id,
              ok: false,
              error: { code, message: (e as Error).message },
            }),
          );
        }
      }
    }
  }

  /** Stops listening and removes the socket. */
  close(): void {
    try {
      this.listener.close();
      Deno.removeSync(this.path);
    } catch {
      // Already gone.
    }
  }
}

async function* noData(): AsyncGenerator<Uint8Array> {}

function safeClose(c: Deno.Conn) {
  try {
    c.close();
  } catch {
    // Closed by the peer.
  }
}

/** Calls one method on the local agent's socket. */
export async function callLocal<T>(
  path: string,
  method: string,
  args: Record<string, unknown>,
  onProgress?: (p: unknown) => void,
): Promise<T> {
  let conn: Deno.UnixConn;
  try {
    conn = await Deno.connect({ transport: "unix", path });
  } catch {
    throw new RpcError(
      "failed",
      `no local agent at ${path}; start one with 'dcres agent' or pass --agent HOST:PORT`,
    );
  }
  try {
    await conn.write(encodeControl({ v: RPC_VERSION, id: 1, method, deadlineMs: 600_000, args }));
    const dec = new FrameDecoder();
    for await (const chunk of conn.readable) {
      for (const f of dec.push(chunk)) {
        const m = decodeCbor(f.payload) as Record<string, unknown>;
        if ("progress" in m) {
          onProgress?.(m.progress);
          continue;
        }
        if (m.ok) return m.result as T;
        const err = m.error as { code: RpcErrorCode; message: string };
        throw new RpcError(err.code, err.message);
      }
    }
    throw new RpcError("failed", "the local agent closed the connection without answering");
  } finally {
    safeClose(conn);
  }
}
