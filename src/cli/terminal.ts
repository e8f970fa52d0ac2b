/** Relays a guest serial console to this terminal: output to stdout, keystrokes to the guest. */

/** Ctrl-] leaves the console, as in telnet. */
export const ESCAPE_BYTE = 0x1d;

/** Serial console on the terminal. */
export class ConsoleRelay {
  private closed = false;
  private raw = false;
  private readonly done = Promise.withResolvers<void>();

  /** Writes guest output to stdout. */
  write(bytes: Uint8Array): void {
    if (!this.closed) Deno.stdout.writeSync(bytes);
  }

  /** Resolves when the user pressed the escape key or stdin ended. */
  get escaped(): Promise<void> {
    return this.done.promise;
  }

  /** Starts forwarding stdin (raw when it is a terminal) to `input`. */
  attach(input: (bytes: Uint8Array) => void): void {
    if (Deno.stdin.isTerminal()) {
      Deno.stdin.setRaw(true);
      this.raw = true;
    }
    void (async () => {
      const buf = new Uint8Array(1024);
      while (!this.closed) {
        let n: number | null;
        try {
          n = await Deno.stdin.read(buf);
        } catch {
          break;
        }
        if (n === null) break;
        const chunk = buf.subarray(0, n);
        const esc = chunk.indexOf(ESCAPE_BYTE);
        if (esc >= 0) {
          if (esc > 0) input(chunk.slice(0, esc));
          break;
        }
        input(chunk.slice());
      }
      this.done.resolve();
    })();
  }

  /** Restores the terminal. */
  close(): void {
    this.closed = true;
    if (this.raw) Deno.stdin.setRaw(false);
    this.raw = false;
  }
}
