/**
 * The agent's background scrub (`--scrub-rate`): pass after pass, every copy this host should hold
 * is looked for and every stored one read again at the configured rate, in a Worker of its own, so
 * checkpoints, restores and page channels keep their speed. A lost or damaged copy is pulled again
 * from another holder (`SelfRepair`).
 */
import { getLogger } from "@logtape/logtape";
import { type ScrubCounters, setAsideDamaged } from "./scrub.ts";
import type { SelfRepair } from "./self_repair.ts";
import { scrubOffLoop } from "./verify.ts";

const log = getLogger(["dcres", "agent", "scrub"]);

/** Time between the starts of two background passes when none is configured: a day. */
export const DEFAULT_SCRUB_EVERY_MS = 24 * 3600_000;

/** Scrubs this agent's stores in the background until stopped. */
export class BackgroundScrub {
  readonly #stop = new AbortController();
  readonly #done: Promise<void>;

  /**
   * Starts passes over checkpoint root `root` at `rate` bytes/s, one every `everyMs` (at once
   * after one that took longer), repairing through `repair`, counting in `counters`.
   */
  constructor(
    root: string,
    rate: number,
    everyMs: number,
    repair: SelfRepair,
    counters: ScrubCounters,
  ) {
    this.#done = this.#run(root, rate, everyMs, repair, counters);
  }

  async #run(
    root: string,
    rate: number,
    everyMs: number,
    repair: SelfRepair,
    counters: ScrubCounters,
  ) {
    const signal = this.#stop.signal;
    while (!signal.aborted) {
      const t0 = performance.now();
      try {
        // Lost copies first, here and on the other holders: finding one takes a stat or a
        // question, reading every copy takes the whole pass.
        for (const { store, file } of repair.missing()) await this.#pull(repair, store, file);
        await repair.pushLost();
        const files = await scrubOffLoop(root, undefined, signal, rate);
        for (const d of setAsideDamaged(root, files, counters, (f) => repair.replaceable(f))) {
          log.warn("scrub: damaged copy {store}/{file} set aside: {error}", { ...d });
          if (d.file.endsWith(".frag")) await this.#pull(repair, d.store, d.file);
        }
      } catch (e) {
        if (signal.aborted) return;
        log.warn("scrub pass failed: {error}", { error: (e as Error).message });
      }
      await new Promise<void>((r) => {
        const t = setTimeout(r, Math.max(0, everyMs - (performance.now() - t0)));
        signal.addEventListener("abort", () => (clearTimeout(t), r()), { once: true });
      });
    }
  }

  async #pull(repair: SelfRepair, store: string, file: string) {
    try {
      await repair.pull(store, file);
    } catch (e) {
      log.warn("scrub: {error}", { error: (e as Error).message });
    }
  }

  /** Stops the passes (a pass under way ends with its Worker) and waits for the loop to end. */
  async stop(): Promise<void> {
    this.#stop.abort();
    await this.#done;
  }
}
