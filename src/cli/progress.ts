/** Progress of long operations on a terminal: bytes done, rate and ETA; silent otherwise. */
import cliProgress from "cli-progress";
import { type GlobalOptions, showProgress } from "./context.ts";

/** A progress display; a no-op unless stderr is a terminal and --json is off. */
export interface Progress {
  /** Reports bytes done of total. */
  update(done: number, total: number): void;
  /** Removes the bar. */
  stop(): void;
}

const MiB = 1 << 20;

/** Creates a progress bar titled `label`. */
export function progressBar(g: GlobalOptions, label: string): Progress {
  if (!showProgress(g)) return { update: () => {}, stop: () => {} };
  const bar = new cliProgress.SingleBar({
    format:
      `${label} [{bar}] {percentage}% | {doneMiB}/{totalMiB} MiB | {rate} MiB/s | ETA {eta_formatted}`,
    stream: process.stderr,
    hideCursor: true,
    clearOnComplete: true,
    etaBuffer: 20,
  }, cliProgress.Presets.shades_classic);
  let started = false;
  const t0 = performance.now();
  return {
    update(done, total) {
      const payload = {
        doneMiB: (done / MiB).toFixed(0),
        totalMiB: (total / MiB).toFixed(0),
        rate: (done / MiB / Math.max(0.001, (performance.now() - t0) / 1000)).toFixed(0),
      };
      if (!started) {
        bar.start(total, done, payload);
        started = true;
      } else {
        bar.setTotal(total);
        bar.update(done, payload);
      }
    },
    stop() {
      if (started) bar.stop();
    },
  };
}
