/**
 * The calling end of framed RPC on a byte stream (a QUIC stream, a unix connection): the request, the
 * upload as DATA frames and its end, a cancel frame when the caller gives up; then progress, DATA
 * and the reply, whose error arrives as the typed RpcError the handler's side sent.
 */
import { decodeCbor } from "../codec/cbor.ts";
import { rejectOnAbort, withTimeout } from "../rpc/deadline.ts";
import { fromWireError, RpcError } from "../rpc/errors.ts";
import { encodeControl, encodeFrame, FrameKind } from "./frame.ts";
import { type ByteStream, FrameReader } from "./frame_reader.ts";
import { RPC_VERSION } from "./rpc_messages.ts";

/** Options of one call. */
export interface CallOptions {
  /** Milliseconds the agent may take (default 10 min). */
  deadlineMs?: number;
  /** Receives progress messages. */
  onProgress?: (p: unknown) => void;
  /**
   * Receives the handler's DATA frames; when it returns a promise (a bounded inbox's push), the next
   * frame is read once that has settled.
   */
  onData?: (bytes: Uint8Array) => unknown;
  /** Sent to the handler as DATA frames, then the end of the upload. */
  upload?: AsyncIterable<Uint8Array>;
  /** Cancels the call: the agent is told, and the call rejects with code "cancelled". */
  signal?: AbortSignal;
}

/** The default deadline of a call. */
const DEFAULT_DEADLINE_MS = 600_000;
/** How long past its deadline the caller waits for the handler's own deadline error. */
const DEADLINE_GRACE_MS = 5000;

/** Calls `method` as request `id` on `stream`; rejects with RpcError on a typed error, a deadline or cancellation. */
export async function callOnStream<T>(
  stream: ByteStream,
  id: number,
  method: string,
  args: Record<string, unknown>,
  opts: CallOptions,
): Promise<T> {
  const deadlineMs = opts.deadlineMs ?? DEFAULT_DEADLINE_MS;
  const writer = stream.writable.getWriter();
  const reader = new FrameReader(stream.readable);
  await writer.write(encodeControl({ v: RPC_VERSION, id, method, deadlineMs, args }));
  const cancel = () =>
    void writer.write(encodeControl({ v: RPC_VERSION, cancel: id })).catch(() => {
      // The stream is gone: the handler's side has seen the end of the call already.
    });
  opts.signal?.addEventListener("abort", cancel, { once: true });
  // A signal that aborted before the request went out fires no event any more.
  if (opts.signal?.aborted) cancel();
  if (opts.upload) {
    const upload = opts.upload;
    void (async () => {
      for await (const b of upload) await writer.write(encodeFrame(FrameKind.DATA, b));
      await writer.write(encodeControl({ v: RPC_VERSION, eod: id }));
    })().catch(cancel);
  }
  const answer = async (): Promise<T> => {
    for (;;) {
      const f = await reader.next();
      if (!f) {
        throw new RpcError("failed", `the agent closed the stream without answering ${method}`);
      }
      if (f.kind === FrameKind.DATA) {
        await opts.onData?.(f.payload);
        continue;
      }
      const m = decodeCbor(f.payload) as Record<string, unknown>;
      if ("progress" in m) {
        opts.onProgress?.(m.progress);
        continue;
      }
      if (m.ok) return m.result as T;
      throw fromWireError(m.error);
    }
  };
  try {
    return await withTimeout(
      Promise.race([answer(), rejectOnAbort(opts.signal)]),
      deadlineMs + DEADLINE_GRACE_MS,
      method,
      cancel,
    );
  } finally {
    opts.signal?.removeEventListener("abort", cancel);
    await writer.close().catch(() => {
      // The other side closed it first.
    });
  }
}
