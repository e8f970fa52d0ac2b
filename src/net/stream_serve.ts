/**
 * The serving end of framed RPC on a byte stream: a request frame, then the caller's DATA frames and
 * its end of upload or cancel; progress, DATA and one reply frame back, all run by the dispatcher.
 * On a QUIC stream one call is all there is, and the end of the stream ends the upload. On a unix
 * connection (`perConnection`) calls follow one another, and the end of the connection means the
 * caller left: the local client ends an upload with an end-of-data frame, never by closing.
 */
import type { Caller, CallOutcome, Dispatcher, OpenCall } from "../rpc/dispatcher.ts";
import { RpcError, toWireError } from "../rpc/errors.ts";
import { encodeControl, encodeFrame, type Frame, FrameError, FrameKind } from "./frame.ts";
import { type ByteStream, FrameReader } from "./frame_reader.ts";
import { parseRequest, RPC_VERSION } from "./rpc_messages.ts";
import { getLogger } from "@logtape/logtape";

const log = getLogger(["dcres", "rpc"]);

/** Serves the calls that arrive on `stream` from `caller` until it ends, then closes our side. */
export async function serveFramedCalls(
  stream: ByteStream,
  dispatcher: Dispatcher,
  caller: Caller,
  perConnection: boolean,
): Promise<void> {
  const reader = new FrameReader(stream.readable);
  const writer = stream.writable.getWriter();
  const reply = (id: number, o: CallOutcome) =>
    writer.write(encodeControl({ v: RPC_VERSION, id, ...o }));
  const refuse = (e: unknown) => {
    const error = toWireError(e instanceof FrameError ? new RpcError("bad-request", e.message) : e);
    log.warn("refused bytes from {peer} on the {via} socket: {reason}", {
      peer: caller.peer,
      via: caller.via,
      reason: error.message,
    });
    return reply(-1, { ok: false, error });
  };
  try {
    let frame = await reader.next();
    while (frame) {
      if (perConnection && frame.kind === FrameKind.DATA) {
        // DATA of a call that is over (its handler did not read it all).
        frame = await reader.next();
        continue;
      }
      let req: ReturnType<typeof parseRequest>;
      try {
        req = parseRequest(frame.payload);
      } catch (e) {
        await refuse(e);
        if (!perConnection) return;
        frame = await reader.next();
        continue;
      }
      if (!("method" in req)) {
        // A cancel or end of upload of a call that is over.
        if (!perConnection) return;
        frame = await reader.next();
        continue;
      }
      const id = req.id;
      const call = dispatcher.open(req, caller, {
        progress: (p) =>
          void writer.write(encodeControl({ v: RPC_VERSION, id, progress: p })).catch(() => {
            // The caller left; writing the outcome fails the same way and ends the stream.
          }),
        send: (b) => writer.write(encodeFrame(FrameKind.DATA, b)),
      });
      const inbound = pumpInbound(reader, call, id, perConnection);
      await reply(id, await call.outcome);
      if (!perConnection) return;
      frame = await inbound;
    }
  } catch (e) {
    // Bytes that are not frames where a request belongs: say why, then end the stream.
    await refuse(e).catch(() => {
      // The caller left before it could be told.
    });
  } finally {
    await writer.close().catch(() => {
      // The caller closed the stream first.
    });
  }
}

/**
 * Feeds `call` what its caller sends after the request: DATA, the end of the upload, a cancel; a
 * broken stream or bad frames cancel it. On a connection, resolves with the first frame that is not
 * the call's (the next request), or undefined where the connection ends.
 */
async function pumpInbound(
  reader: FrameReader,
  call: OpenCall,
  id: number,
  perConnection: boolean,
): Promise<Frame | undefined> {
  for (;;) {
    let f: Frame | undefined;
    try {
      f = await reader.next();
    } catch (e) {
      call.cancel(new RpcError("cancelled", (e as Error).message));
      return undefined;
    }
    if (perConnection && call.settled) return f;
    if (!f) {
      if (perConnection) call.cancel(new RpcError("cancelled", "the caller closed the connection"));
      else call.endOfData();
      return undefined;
    }
    if (f.kind === FrameKind.DATA) {
      await call.data(f.payload);
      continue;
    }
    let m: ReturnType<typeof parseRequest>;
    try {
      m = parseRequest(f.payload);
    } catch (e) {
      call.cancel(e as RpcError);
      if (perConnection) continue;
      return undefined;
    }
    if ("method" in m) {
      if (perConnection) return f;
      continue;
    }
    if ("eod" in m && m.eod === id) call.endOfData();
    if ("cancel" in m && m.cancel === id) {
      call.cancel(new RpcError("cancelled", "the caller cancelled the call"));
    }
  }
}
