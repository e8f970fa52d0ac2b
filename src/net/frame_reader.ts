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
  /** Frames decoded, not yet returned: those of one chunk, taken from `#head` on. */
  #queue: Frame[] = [];
  #head = 0;

  constructor(readable: ReadableStream<Uint8Array>, limits?: Record<FrameKind, number>) {
    this.#reader = readable.getReader();
    this.#decoder = new FrameDecoder(limits);
  }

  /** The next frame, or undefined where the stream ends; throws FrameError on bad input. */
  async next(): Promise<Frame | undefined> {
    while (this.#head === this.#queue.length) {
      const { value, done } = await this.#reader.read();
      if (done) {
        this.#decoder.end();
        return undefined;
      }
      // Replaced, not appended to, and read by index: shift() on the 131072 frames of one 1 MiB
      // chunk of empty frames was quadratic (6 s), and push(...frames) overflowed the stack.
      this.#queue = this.#decoder.push(value);
      this.#head = 0;
    }
    return this.#queue[this.#head++];
  }

  /** The next frame as a control message (a CBOR map), or undefined at the end; throws FrameError or RpcError. */
  async message(): Promise<Record<string, unknown> | undefined> {
    const f = await this.next();
    if (!f) return undefined;
    if (f.kind !== FrameKind.CONTROL) throw new FrameError("bad-kind", "expected a control frame");
    let m: unknown;
    try {
      m = decodeCbor(f.payload);
    } catch (e) {
      throw new RpcError("bad-request", `malformed message: ${(e as Error).message}`);
    }
    if (typeof m !== "object" || m === null || Array.isArray(m)) {
      throw new RpcError("bad-request", "message is not a map");
    }
    return m as Record<string, unknown>;
  }
}
