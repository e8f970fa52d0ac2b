/**
 * An inbox of byte chunks: one side pushes what arrives (an RPC call's DATA frames), the other reads
 * it as an async iterable that ends when the sender ends or fails. It is bounded: once it holds
 * `maxBytes`, a push resolves only when the reader has taken enough, so a producer that awaits its
 * pushes (the transports do, and so the peer's flow control) never runs more than that ahead.
 */

/** What an inbox holds before producers wait: a few of the RPC's largest DATA frames. */
export const INBOX_BYTES = 8 << 20;

/** A chunk that waits for room, and its producer. */
interface Waiting {
  chunk: Uint8Array;
  resolve: () => void;
}

/** A bounded queue of byte chunks between a producer and one reader. */
export class Inbox implements AsyncIterable<Uint8Array> {
  readonly #maxBytes: number;
  readonly #items: Uint8Array[] = [];
  /** Chunks pushed while the inbox was full, in order. */
  readonly #waiting: Waiting[] = [];
  #bytes = 0;
  #waiter?: PromiseWithResolvers<void>;
  #ended = false;
  /** The reader stopped reading: nobody takes what is pushed any more. */
  #abandoned = false;
  #error?: Error;

  /** An inbox that holds at most `maxBytes` (a single larger chunk is taken when it is empty). */
  constructor(maxBytes = INBOX_BYTES) {
    this.#maxBytes = maxBytes;
  }

  /** Bytes queued for the reader now. */
  get queuedBytes(): number {
    return this.#bytes;
  }

  /**
   * Adds a chunk, in order after every earlier one; resolves once it is queued for the reader (at
   * once while there is room). Once the reader has gone (`discard`), it resolves at once and the
   * chunk is dropped. Never rejects.
   */
  push(chunk: Uint8Array): Promise<void> {
    if (this.#abandoned) return Promise.resolve();
    if (this.#waiting.length === 0 && this.#fits(chunk)) {
      this.#enqueue(chunk);
      return Promise.resolve();
    }
    const w = Promise.withResolvers<void>();
    this.#waiting.push({ chunk, resolve: w.resolve });
    return w.promise;
  }

  /** No more chunks will come; `err` makes the reader throw after what was queued. */
  end(err?: Error): void {
    if (this.#ended) return;
    this.#ended = true;
    this.#error = err;
    this.#waiter?.resolve();
  }

  /** Reads chunks until the end. */
  async *[Symbol.asyncIterator](): AsyncIterator<Uint8Array> {
    try {
      for (;;) {
        const next = this.#items.shift();
        if (next) {
          this.#bytes -= next.length;
          this.#admit();
          yield next;
          continue;
        }
        if (this.#ended) {
          if (this.#error) throw this.#error;
          return;
        }
        this.#waiter = Promise.withResolvers<void>();
        await this.#waiter.promise;
        this.#waiter = undefined;
      }
    } finally {
      this.discard();
    }
  }

  /**
   * The reader reads no more (it stopped, or its call is over): what is queued is dropped and the
   * producers waiting for room go on.
   */
  discard(): void {
    this.#abandoned = true;
    this.#items.length = 0;
    this.#bytes = 0;
    for (const w of this.#waiting.splice(0)) w.resolve();
  }

  #fits(chunk: Uint8Array): boolean {
    return this.#bytes === 0 || this.#bytes + chunk.length <= this.#maxBytes;
  }

  #enqueue(chunk: Uint8Array) {
    this.#items.push(chunk);
    this.#bytes += chunk.length;
    this.#waiter?.resolve();
  }

  /** Moves waiting chunks in, in order, while they fit. */
  #admit() {
    while (this.#waiting.length && this.#fits(this.#waiting[0].chunk)) {
      const w = this.#waiting.shift()!;
      this.#enqueue(w.chunk);
      w.resolve();
    }
  }
}
