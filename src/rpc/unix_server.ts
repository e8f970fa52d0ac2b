/**
 * The listening end of an RPC transport on a unix socket (the agent's local socket, a VMM's control
 * socket): it replaces a stale socket file, serves each connection on its own and closes it after.
 */

/** Listens on a unix socket and hands every connection to `serve`. */
export class UnixSocketServer {
  readonly #path: string;
  readonly #listener: Deno.UnixListener;

  /** Starts listening at `path`; with `mode`, the socket file gets those permissions. */
  constructor(path: string, serve: (conn: Deno.UnixConn) => Promise<void>, mode?: number) {
    this.#path = path;
    try {
      Deno.removeSync(path);
    } catch {
      // No stale socket to replace.
    }
    const listener = Deno.listen({ transport: "unix", path });
    this.#listener = listener;
    if (mode !== undefined) Deno.chmodSync(path, mode);
    void (async () => {
      for await (const conn of listener) {
        void serve(conn).catch(() => {
          // A connection that broke or sent garbage: it is closed below, the server goes on.
        }).finally(() => closeQuietly(conn));
      }
    })().catch(() => {
      // The listener was closed.
    });
  }

  /** The socket's path. */
  get path(): string {
    return this.#path;
  }

  /** Stops listening and removes the socket file. */
  close(): void {
    try {
      this.#listener.close();
    } catch {
      // Already closed.
    }
    try {
      Deno.removeSync(this.#path);
    } catch {
      // Already gone.
    }
  }
}

/** Closes `conn` unless the peer or a stop closed it first. */
export function closeQuietly(conn: Deno.Conn): void {
  try {
    conn.close();
  } catch {
    // Already closed.
  }
}
