/** Frames read one at a time off a byte stream: a QUIC stream or a unix connection. */
import { decodeCbor } from "../codec/cbor.ts";
import { type Frame, FrameDecoder, FrameError, FrameKind } from "./frame.ts";
import { RpcError } from "../rpc/errors.ts";

/** A bidirectional byte stream: a QUIC stream or a unix connection. */
export interface ByteStream {
  /** What the peer sends. */
  readable: ReadableStream<Uint8Array>;
  /** What goes to the peer. */
  writable: WritableStream<Uint8Array>;
}

/** Reads frames off one stream; the stream must be dropped after a FrameError. */
export class FrameReader {
  readonly #reader: ReadableStreamDefaultReader<Uint8Array>;
  readonly #decoder: FrameDecoder;
  readonly #queue: Frame[] = [];

  constructor(readable: ReadableStream<Uint8Array>, limits?: Record<FrameKind, number>) {
    this.#reader = readable.getReader();
    this.#decoder = new FrameDecoder(limits);
  }

  /** The next frame, or undefined where the stream ends; throws FrameError on bad input. */
  async next(): Promise<Frame | undefined> {
    while (this.#queue.length === 0) {
      const { value, done } = await this.#reader.read();
      if (done) {
        this.#decoder.end();
        return undefined;
      }
      this.#queue.push(...this.#decoder.push(value));
    }
    return this.#queue.shift();
  }

  /** The next frame as a control message (a CBOR map), or undefined where the stream ends. */
  async message(): Promise<Record<string, unknown> | undefined> {
    const f = await this.next();
    if (!f) return undefined;
    if (f.kind !== FrameKind.CONTROL) throw new FrameError("bad-kind", "expected a control frame");
    const m = decodeCbor(f.payload);
    if (typeof m !== "object" || m === null) {
      throw new RpcError("bad-request", "message is not a map");
    }
    return m as Record<string, unknown>;
  }
}
