/**
 * The agent's scrub (`ckpt.scrub`): every fragment copy in its stores read again in a Worker and
 * checked against the manifest naming it; a damaged copy is set aside (`FILE.damaged`, never
 * deleted) so a repair pushes a whole one in its place. Its counters feed `/metrics`.
 */
import { join } from "node:path";
import type { RpcHandler } from "../rpc/dispatcher.ts";
import type { ScrubbedFile } from "../ckpt/scrub.ts";
import { metricFamily } from "../codec/prometheus.ts";
import { nameArg } from "./paths.ts";
import { scrubOffLoop } from "./verify.ts";

/** What this agent's scrubs and repairs have done since it started. */
export class ScrubCounters {
  /** Bytes of fragment copies read and checked. */
  bytes = 0;
  /** Damaged copies found. */
  damaged = 0;
  /** Of those, set aside for a repair to replace. */
  setAside = 0;
  /** Copies written here to replace a lost or damaged one (by this agent or a `ckpt repair`). */
  repaired = 0;

  /** The counters as `status` shows them. */
  toJSON(): Record<string, number> {
    const { bytes, damaged, setAside, repaired } = this;
    return { bytes, damaged, setAside, repaired };
  }

  /** The counters in Prometheus text form. */
  metrics(): string[] {
    return [
      ...metricFamily(
        "dcres_scrub_bytes_total",
        "counter",
        "Bytes of stored fragment copies scrubbed.",
        [
          { value: this.bytes },
        ],
      ),
      ...metricFamily(
        "dcres_scrub_damaged_total",
        "counter",
        "Damaged fragment copies scrubs found.",
        [
          { value: this.damaged },
        ],
      ),
      ...metricFamily(
        "dcres_scrub_set_aside_total",
        "counter",
        "Damaged copies set aside for a repair to replace.",
        [{ value: this.setAside }],
      ),
      ...metricFamily(
        "dcres_repair_copies_total",
        "counter",
        "Fragment copies written here in place of lost or damaged ones.",
        [{ value: this.repaired }],
      ),
    ];
  }
}

/**
 * Counts what a scrub read and sets each damaged fragment copy aside as `FILE.damaged` (one that
 * is gone already, set aside by another scrub, is passed over), but only those `replaceable`
 * allows; returns the damaged ones it set aside, or was allowed to.
 */
export function setAsideDamaged(
  root: string,
  files: ScrubbedFile[],
  counters: ScrubCounters,
  replaceable: (f: ScrubbedFile) => boolean = () => true,
): ScrubbedFile[] {
  const found = files.filter((f) => f.error);
  counters.bytes += files.reduce((a, f) => a + f.bytes, 0);
  counters.damaged += found.length;
  const damaged = found.filter(replaceable);
  for (const f of damaged) {
    if (!f.file.endsWith(".frag")) continue;
    const path = join(root, f.store, f.file);
    try {
      Deno.renameSync(path, `${path}.damaged`);
      counters.setAside++;
    } catch (e) {
      if (!(e instanceof Deno.errors.NotFound)) throw e;
    }
  }
  return damaged;
}

/** `ckpt.scrub {store?}` over the checkpoint root `root`. */
export function scrubHandlers(root: string, counters: ScrubCounters): Record<string, RpcHandler> {
  return {
    "ckpt.scrub": async (args, ctx) => {
      const store = args.store === undefined ? undefined : nameArg(args, "store", "store");
      const files: ScrubbedFile[] = await scrubOffLoop(root, store, ctx.signal);
      const damaged = setAsideDamaged(root, files, counters);
      return { files: files.length, bytes: files.reduce((a, f) => a + f.bytes, 0), damaged };
    },
  };
}
