/**
 * The control socket as a transport under the RPC dispatcher. Calls on one connection run in turn;
 * the caller gives up on one by closing the connection, which cancels it. A streaming call (the
 * console) is answered yes at once and turns the connection into raw bytes: what the caller writes
 * is the call's DATA, the handler's DATA goes back as it is, and the call ends with the connection.
 */
import type { Caller, Dispatcher, OpenCall } from "../../rpc/dispatcher.ts";
import { RpcError, toWireError } from "../../rpc/errors.ts";
import { closeQuietly } from "../../rpc/unix_server.ts";
import { LineReader } from "./lines.ts";
import { controlReplyOf, encodeLine, parseControlRequest } from "./protocol.ts";

/** How a control socket serves its methods beyond plain calls. */
export interface ControlTransportOptions {
  /** Methods that turn the connection into a raw byte stream. */
  streaming: ReadonlySet<string>;
  /** Runs once that method's reply is written and its connection closed (stop: the VMM goes). */
  afterReply: Readonly<Record<string, () => Promise<void>>>;
}

const CALLER: Caller = { peer: "local", role: "root", via: "control" };

/** Serves the calls on one control connection until it ends. */
export async function serveControlConnection(
  conn: Deno.UnixConn,
  dispatcher: Dispatcher,
  opts: ControlTransportOptions,
): Promise<void> {
  const lines = new LineReader(conn.readable);
  const writer = conn.writable.getWriter();
  const send = (message: unknown) => writer.write(encodeLine(message));
  let next = lines.next();
  for (;;) {
    const line = await next;
    if (line === undefined) return;
    let call;
    try {
      call = parseControlRequest(line);
    } catch (e) {
      await send(controlReplyOf({ ok: false, error: toWireError(e) }));
      next = lines.next();
      continue;
    }
    if (opts.streaming.has(call.method)) {
      await send({ ok: true, result: null });
      const open = dispatcher.open(call, CALLER, {
        progress: () => {
          // A raw byte stream has no room for progress messages.
        },
        send: (b) => writer.write(b),
      });
      feedRaw(lines, open);
      await open.outcome;
      return;
    }
    const open = dispatcher.open(call, CALLER, {
      progress: (p) =>
        void send({ progress: p }).catch(() => {
          // The caller left: the call is cancelled by the end of its connection.
        }),
      send: () =>
        Promise.reject(new RpcError("bad-request", `${call.method} carries no data here`)),
    });
    // Reading on while the call runs is how the end of the connection is seen.
    next = lines.next();
    next.then((l) => {
      if (l === undefined) {
        open.cancel(new RpcError("cancelled", "the caller closed the connection"));
      }
    }, (e) => open.cancel(new RpcError("cancelled", (e as Error).message)));
    await send(controlReplyOf(await open.outcome));
    const after = Object.hasOwn(opts.afterReply, call.method) ? opts.afterReply[call.method] : null;
    if (after) {
      closeQuietly(conn);
      return await after();
    }
  }
}

/** Gives a streaming call everything the caller writes after its request line. */
function feedRaw(lines: LineReader, call: OpenCall) {
  void (async () => {
    for await (const b of lines.raw()) await call.data(b);
    call.endOfData();
  })().catch((e) => call.cancel(new RpcError("cancelled", (e as Error).message)));
}
