/**
 * Lines off a control socket connection, and the raw bytes after them once a `console` request has
 * turned it into a byte stream.
 */
import { RpcError } from "../../rpc/errors.ts";

/** Longest request or reply line accepted. */
const MAX_LINE = 1 << 20;

/** Reads newline-terminated lines, then, if asked, the raw stream after the last one. */
export class LineReader {
  readonly #reader: ReadableStreamDefaultReader<Uint8Array>;
  readonly #decoder = new TextDecoder();
  #buf = new Uint8Array(0);

  constructor(readable: ReadableStream<Uint8Array>) {
    this.#reader = readable.getReader();
  }

  /** The next line without its newline, or undefined where the stream ends (a cut line is dropped). */
  async next(): Promise<string | undefined> {
    for (;;) {
      const nl = this.#buf.indexOf(10);
      if (nl >= 0) {
        const line = this.#decoder.decode(this.#buf.subarray(0, nl));
        this.#buf = this.#buf.subarray(nl + 1);
        return line;
      }
      if (this.#buf.length > MAX_LINE) {
        throw new RpcError("bad-request", `control line longer than ${MAX_LINE} bytes`);
      }
      const { value, done } = await this.#reader.read();
      if (done) return undefined;
      const joined = new Uint8Array(this.#buf.length + value.length);
      joined.set(this.#buf);
      joined.set(value, this.#buf.length);
      this.#buf = joined;
    }
  }

  /** Everything after the last line read, as it arrives, until the stream ends. */
  async *raw(): AsyncGenerator<Uint8Array> {
    if (this.#buf.length) yield this.#buf;
    this.#buf = new Uint8Array(0);
    for (;;) {
      const { value, done } = await this.#reader.read();
      if (done) return;
      yield value;
    }
  }
}
