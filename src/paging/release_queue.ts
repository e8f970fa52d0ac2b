/**
 * The releases main owes one sub-host: pages main took over (by a fault or a gather) that the
 * sub-host still keeps. They go out in batches, so a fault costs the sub-host one message, not two,
 * and those not yet acknowledged are sent again after a reconnect.
 */
import { batches } from "./batches.ts";
import { MAX_BATCH } from "./wire.ts";

/** Longest a release waits for others to share its message. */
const RELEASE_DELAY_MS = 5;

/** One sub-host's pending releases. */
export class ReleaseQueue {
  /** Not sent yet. */
  readonly #queued = new Set<number>();
  /** Not acknowledged yet (sent or not). */
  readonly #unreleased = new Set<number>();
  #timer?: ReturnType<typeof setTimeout>;
  readonly #send: (gfns: number[]) => Promise<unknown>;
  readonly #track: (p: Promise<unknown>) => void;

  /** `send` delivers one batch; `track` counts each send as in flight until it settles. */
  constructor(
    send: (gfns: number[]) => Promise<unknown>,
    track: (p: Promise<unknown>) => void,
  ) {
    this.#send = send;
    this.#track = track;
  }

  /** Queues telling the sub-host it no longer holds `gfns`; a full batch goes out at once. */
  queue(gfns: number[]): void {
    for (const g of gfns) {
      this.#unreleased.add(g);
      this.#queued.add(g);
    }
    if (this.#queued.size >= MAX_BATCH) this.flush();
    else if (!this.#timer) this.#timer = setTimeout(() => this.flush(), RELEASE_DELAY_MS);
  }

  /** Sends what is queued now. */
  flush(): void {
    clearTimeout(this.#timer);
    this.#timer = undefined;
    const q = [...this.#queued];
    this.#queued.clear();
    for (const b of batches(q)) this.#track(this.#release(b));
  }

  /**
   * `gfns` are about to be PUT on the sub-host again: a release of them not sent yet must not be,
   * or it would arrive after the PUT and undo it. (One already sent is ahead of the PUT on the same
   * channel, so it is harmless.)
   */
  cancel(gfns: ArrayLike<number>): void {
    for (let i = 0; i < gfns.length; i++) {
      this.#queued.delete(gfns[i]);
      this.#unreleased.delete(gfns[i]);
    }
  }

  /**
   * Runs `put`, which PUTs `gfns` on the sub-host again, with their releases not sent yet held back
   * (see `cancel`). If it fails, the releases are owed again: the sub-host may still hold a copy,
   * the one whose release was held back, or the PUT's own if it landed before the link failed.
   * Dropped with the failed PUT, such a release left the sub-host holding a page main held.
   */
  async replacing<T>(gfns: ArrayLike<number>, put: () => Promise<T>): Promise<T> {
    this.cancel(gfns);
    try {
      return await put();
    } catch (e) {
      this.queue(Array.from(gfns));
      throw e;
    }
  }

  /** Releases not acknowledged yet: queued, in flight, or waiting for the link to be back. */
  get unacknowledged(): number {
    return this.#unreleased.size;
  }

  /** The link is back: every release not acknowledged goes out again. */
  resend(): void {
    this.#queued.clear();
    this.queue([...this.#unreleased]);
  }

  /** Stops the timer of a batch not sent (paging stops). */
  stop(): void {
    clearTimeout(this.#timer);
  }

  /** Tells the sub-host it no longer holds `gfns` (main has them); retried after a reconnect. */
  async #release(gfns: number[]) {
    try {
      await this.#send(gfns);
      for (const g of gfns) this.#unreleased.delete(g);
    } catch {
      // Still unreleased; sent again when the link is back.
    }
  }
}
