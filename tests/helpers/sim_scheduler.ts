/**
 * The deterministic scheduler of the split checkpoint simulation: every message, page move and
 * disk write waits on an event here, and one seeded generator decides which event fires next,
 * whether it fails, and what the guest and the pager do between events. The same seed replays the
 * same run exactly, so a failing seed is its own reproduction.
 */

/** A failure the simulation injected (a lost message, a failed write). */
export class SimFault extends Error {
  constructor(what: string) {
    super(`simulated failure: ${what}`);
    this.name = "SimFault";
  }
}

/** The simulation's own invariant broke, or a run did not finish. */
export class SimFailure extends Error {
  constructor(message: string) {
    super(message);
    this.name = "SimFailure";
  }
}

/** Small, fast, seedable: mulberry32. */
export class Rng {
  #s: number;

  constructor(seed: number) {
    this.#s = seed >>> 0;
  }

  /** A number in [0, 1). */
  next(): number {
    let t = (this.#s = (this.#s + 0x6d2b79f5) >>> 0);
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }

  /** An integer in [0, n). */
  int(n: number): number {
    return Math.floor(this.next() * n);
  }

  /** True with probability `p`. */
  chance(p: number): boolean {
    return this.next() < p;
  }

  /** One of `xs` (which must not be empty). */
  pick<T>(xs: readonly T[]): T {
    return xs[this.int(xs.length)];
  }
}

interface Pending {
  label: string;
  /** The clock before which it cannot fire (a message held up in the network). */
  readyAt: number;
  resolve: () => void;
  reject: (e: Error) => void;
  /** May fail when it fires (failures on). */
  failable: boolean;
}

/** Lets every promise chain that can advance advance (no timers: the run stays deterministic). */
export async function settle(): Promise<void> {
  for (let i = 0; i < 64; i++) await Promise.resolve();
}

/** Orders every event of one simulated run. */
export class Scheduler {
  readonly rng: Rng;
  #pending: Pending[] = [];
  #trace: string[] = [];
  #digest = 2166136261;
  /** Probability that a failable event fails when it fires (0: failures off). */
  failRate = 0;
  /** Events fired, the simulation's clock. */
  clock = 0;
  /** Failures injected. */
  faults = 0;

  constructor(
    readonly seed: number,
    readonly traceLimit = 120,
    /** Told every line as it is noted (a replay prints them). */
    readonly log?: (line: string) => void,
  ) {
    this.rng = new Rng(seed);
  }

  /** Records a line of what happened (the last `traceLimit` are kept for a failure's report). */
  note(line: string): void {
    const entry = `${this.clock}: ${line}`;
    for (let i = 0; i < entry.length; i++) {
      this.#digest = Math.imul(this.#digest ^ entry.charCodeAt(i), 16777619) >>> 0;
    }
    this.#trace.push(entry);
    this.log?.(entry);
    if (this.#trace.length > this.traceLimit) this.#trace.shift();
  }

  /** FNV-1a of every line ever noted: two runs with one digest took the same course. */
  get digest(): number {
    return this.#digest;
  }

  /** The recorded lines, oldest first. */
  get trace(): readonly string[] {
    return this.#trace;
  }

  /**
   * Waits until the scheduler fires this event, not before `after` other events have fired;
   * rejects with SimFault if it fails then.
   */
  wait(label: string, failable = false, after = 0): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      this.#pending.push({ label, readyAt: this.clock + after, resolve, reject, failable });
    });
  }

  /** Events waiting to fire. */
  get pending(): number {
    return this.#pending.length;
  }

  /**
   * Fires one waiting event, picked at random (false when none waits); a failable one fails with
   * probability `failRate`.
   */
  fire(): boolean {
    if (!this.#pending.length) return false;
    const ready: number[] = [];
    this.#pending.forEach((p, i) => {
      if (p.readyAt <= this.clock) ready.push(i);
    });
    // Only held-up events wait: the clock moves on to the first of them.
    const at = ready.length ? this.rng.pick(ready) : this.#pending.reduce(
      (best, p, i) => p.readyAt < this.#pending[best].readyAt ? i : best,
      0,
    );
    const [ev] = this.#pending.splice(at, 1);
    this.clock = Math.max(this.clock + 1, ev.readyAt);
    if (ev.failable && this.failRate > 0 && this.rng.chance(this.failRate)) {
      this.faults++;
      this.note(`FAIL ${ev.label}`);
      ev.reject(new SimFault(ev.label));
    } else {
      this.note(ev.label);
      ev.resolve();
    }
    return true;
  }

  /** A failure naming the seed to replay and the trace leading to it. */
  failure(message: string): SimFailure {
    return new SimFailure(
      `seed ${this.seed}: ${message}\n(replay: deno task simulate --seed ${this.seed} --trace)\n` +
        `last events:\n  ${this.#trace.join("\n  ")}`,
    );
  }
}
