/** Fans the guest's serial output out to attached consoles and keeps recent history for late joiners. */

const HISTORY = 64 * 1024;

/** Serial output history plus live subscribers. */
export class ConsoleHub {
  private history = new Uint8Array(0);
  private readonly subscribers = new Set<(b: Uint8Array) => void>();
  private readonly decoder = new TextDecoder();
  private text = "";

  /** Called with every byte the guest writes. */
  push(bytes: Uint8Array): void {
    const joined = new Uint8Array(Math.min(HISTORY, this.history.length + bytes.length));
    const keep = joined.length - bytes.length;
    if (keep > 0) joined.set(this.history.subarray(this.history.length - keep));
    joined.set(bytes.subarray(Math.max(0, bytes.length - joined.length)), Math.max(0, keep));
    this.history = joined;
    this.text = (this.text + this.decoder.decode(bytes, { stream: true })).slice(-HISTORY);
    for (const s of this.subscribers) s(bytes);
  }

  /** Recent output, oldest first. */
  recent(): Uint8Array {
    return this.history.slice();
  }

  /** Recent output as text. */
  recentText(): string {
    return this.text;
  }

  /** Receives output from now on; returns the unsubscribe function. */
  subscribe(fn: (b: Uint8Array) => void): () => void {
    this.subscribers.add(fn);
    return () => this.subscribers.delete(fn);
  }

  /** Resolves with the output text from now on once `pattern` matches it, or rejects on timeout. */
  waitFor(pattern: RegExp, timeoutMs: number, alreadySeen = false): Promise<string> {
    if (alreadySeen && pattern.test(this.text)) return Promise.resolve(this.text);
    return new Promise((resolve, reject) => {
      let seen = "";
      const dec = new TextDecoder();
      const timer = setTimeout(() => {
        off();
        reject(
          new Error(`timed out after ${timeoutMs} ms waiting for ${pattern} on the serial console`),
        );
      }, timeoutMs);
      const off = this.subscribe((b) => {
        seen += dec.decode(b, { stream: true });
        if (pattern.test(seen)) {
          clearTimeout(timer);
          off();
          resolve(seen);
        }
      });
    });
  }
}
