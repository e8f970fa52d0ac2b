/**
 * An inbox of byte chunks: one side pushes what arrives (an RPC call's DATA frames), the other reads
 * it as an async iterable that ends when the sender ends or fails.
 */
export class Inbox implements AsyncIterable<Uint8Array> {
  readonly #items: Uint8Array[] = [];
  #waiter?: PromiseWithResolvers<void>;
  #ended = false;
  #error?: Error;

  /** Adds a chunk. */
  push(chunk: Uint8Array): void {
    this.#items.push(chunk);
    this.#waiter?.resolve();
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
    for (;;) {
      const next = this.#items.shift();
      if (next) {
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
  }
}
