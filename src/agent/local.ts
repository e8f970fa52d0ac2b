/**
 * The agent's RPC on a unix socket for the CLI on the same host: the same frames, methods and
 * dispatcher as over QUIC (deadlines, cancellation, DATA both ways), calls in turn on a connection;
 * access is the socket file's permissions (0600), as for any local daemon.
 */
import { callOnStream, type CallOptions } from "../net/stream_call.ts";
import { serveFramedCalls } from "../net/stream_serve.ts";
import { Dispatcher, type RpcHandler } from "../rpc/dispatcher.ts";
import { RpcError } from "../rpc/errors.ts";
import { closeQuietly, UnixSocketServer } from "../rpc/unix_server.ts";

/** Serves `handlers` on a unix socket. */
export class LocalRpcServer {
  readonly #socket: UnixSocketServer;

  constructor(path: string, handlers: Record<string, RpcHandler>) {
    const dispatcher = new Dispatcher(handlers);
    this.#socket = new UnixSocketServer(
      path,
      (conn) =>
        serveFramedCalls(conn, dispatcher, { peer: "local", role: "root", via: "local" }, true),
      0o600,
    );
  }

  /** Stops listening and removes the socket. */
  close(): void {
    this.#socket.close();
  }
}

/** Calls one method on the local agent's socket; rejects with the handler's typed RpcError. */
export async function callLocal<T>(
  path: string,
  method: string,
  args: Record<string, unknown>,
  opts: CallOptions = {},
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
    return await callOnStream<T>(conn, 1, method, args, opts);
  } finally {
    closeQuietly(conn);
  }
}
