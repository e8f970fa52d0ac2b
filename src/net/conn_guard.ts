/**
 * What peers can make an RPC server do (issue 14 item 4, docs/SECURITY.md "Bounds"): connections
 * authenticating at once over all addresses, connections per remote address, and calls in flight
 * per connection. Each bound has a default an agent runs with; tests lower them.
 */

/** Limits of an RpcServer. */
export interface ServerLimits {
  /** Calls in flight on one connection; further streams wait until one ends. */
  streamsPerConnection: number;
  /** Connections from one remote address, counting those not yet authenticated. */
  connectionsPerAddress: number;
  /** Connections authenticating at once over all addresses; beyond it new ones are refused at once. */
  handshakes: number;
  /** Milliseconds a connection has to authenticate. */
  handshakeTimeoutMs: number;
  /** Milliseconds between re-checks of each authenticated peer's certificate (expiry, revocation). */
  recheckMs: number;
}

/** The limits an agent runs with. */
export const DEFAULT_LIMITS: ServerLimits = {
  streamsPerConnection: 64,
  connectionsPerAddress: 16,
  handshakes: 32,
  handshakeTimeoutMs: 10_000,
  recheckMs: 60_000,
};

/**
 * Admission of new connections. The handshake count is taken before the QUIC handshake, so a flood
 * beyond it costs no TLS handshake and no certificate check. The count per address is taken right
 * after it (Deno 2.9 invalidates a QuicIncoming whose remoteAddr is read) until the connection
 * closes.
 */
export class Admission {
  readonly #perAddress = new Map<string, number>();
  #authenticating = 0;

  constructor(private readonly limits: ServerLimits) {}

  /** Why a new connection is refused now, or undefined when it may start its handshake (counted). */
  begin(): string | undefined {
    if (this.#authenticating >= this.limits.handshakes) {
      return `${this.#authenticating} connections are authenticating (at most ${this.limits.handshakes})`;
    }
    this.#authenticating++;
    return undefined;
  }

  /** Why a connection from `address` is refused, or undefined when it is counted against it. */
  address(address: string): string | undefined {
    const n = this.#perAddress.get(address) ?? 0;
    if (n >= this.limits.connectionsPerAddress) {
      return `${address} already has ${n} connections (at most ${this.limits.connectionsPerAddress})`;
    }
    this.#perAddress.set(address, n + 1);
    return undefined;
  }

  /** A connection has authenticated or failed to: it no longer counts as a handshake. */
  authenticated(): void {
    this.#authenticating--;
  }

  /** A connection counted against `address` is gone. */
  closed(address: string): void {
    const n = (this.#perAddress.get(address) ?? 1) - 1;
    if (n > 0) this.#perAddress.set(address, n);
    else this.#perAddress.delete(address);
  }

  /** Connections counted now, for tests and status. */
  get counts(): { authenticating: number; addresses: number } {
    return { authenticating: this.#authenticating, addresses: this.#perAddress.size };
  }
}

/** A counting semaphore: at most `n` holders, and the rest wait in order. */
export class Slots {
  #free: number;
  readonly #waiting: Array<() => void> = [];

  constructor(n: number) {
    this.#free = n;
  }

  /** Resolves once a slot is held. */
  acquire(): Promise<void> {
    if (this.#free > 0) {
      this.#free--;
      return Promise.resolve();
    }
    return new Promise((res) => this.#waiting.push(res));
  }

  /** Gives a slot back, to the first waiter if any. */
  release(): void {
    const next = this.#waiting.shift();
    if (next) next();
    else this.#free++;
  }
}
