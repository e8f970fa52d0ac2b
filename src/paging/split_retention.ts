/**
 * Retention of a split VM's checkpoints, run by its main host after a checkpoint or a merge has
 * committed: main decides from its own store (it holds every manifest) which generations stay, and
 * every sub-host, each also holding copies of others' fragments, removes the rest of the same list
 * from its store (`ckpt.prune`), never anything newer than main had committed.
 */
import { getLogger } from "@logtape/logtape";
import { type Pruned, retainStore, type RetentionReport } from "../ckpt/retention.ts";
import type { SubLink } from "./sub_link.ts";

const log = getLogger(["dcres", "checkpoint"]);

/** Removed entries of a host's `ckpt.prune` answer, checked. */
export function prunedOf(host: string, r: { removed?: unknown }): Pruned[] {
  const list = r.removed;
  const ok = Array.isArray(list) &&
    list.every((p) =>
      typeof p === "object" && p !== null && Number.isSafeInteger(p.generation) &&
      Number.isSafeInteger(p.bytes) && typeof p.committed === "boolean"
    );
  if (!ok) throw new Error(`${host} answered its removals as ${JSON.stringify(list)}`);
  return list as Pruned[];
}

/** A host asked to prune: its name, and a call to its agent (as the deciding host). */
export interface PruneTarget {
  /** Its name. */
  host: string;
  /** Calls `method` on its agent. */
  call<T>(method: string, args: Record<string, unknown>): Promise<T>;
}

/**
 * Asks each of `targets` to remove from store `store` the generations `report` did not keep, up to
 * generation `upTo`; adds what each removed, or why it did not (logged: it only keeps more than it
 * needs), to `report`.
 */
export async function pruneOn(
  report: RetentionReport,
  store: string,
  upTo: number,
  targets: PruneTarget[],
): Promise<void> {
  await Promise.all(targets.map(async (l) => {
    try {
      const r = await l.call<{ removed?: unknown }>("ckpt.prune", {
        store,
        keep: report.kept,
        upTo,
      });
      report.removed[l.host] = prunedOf(l.host, r);
    } catch (e) {
      report.failed[l.host] = (e as Error).message;
      log.warn("{host} did not remove old generations of {store}: {error}", {
        host: l.host,
        store,
        error: (e as Error).message,
      });
    }
  }));
}

/**
 * Applies `keep` (undefined: every consistency point) to main's store `root` (host `self`) and to
 * store `store` on each of `subs`. A host that fails is logged and named in the report: what it
 * keeps is only more than it needs.
 */
export async function retainOnHosts(
  root: string,
  store: string,
  self: string,
  keep: number | undefined,
  subs: SubLink[],
): Promise<RetentionReport> {
  const here = retainStore(root, keep);
  const report: RetentionReport = {
    kept: here.kept,
    removed: { [self]: here.removed },
    failed: {},
  };
  await pruneOn(report, store, here.upTo, subs);
  const n = Object.values(report.removed).reduce((a, p) => a + p.length, 0);
  if (n) {
    log.info("retention of {store} kept generations {kept}; removed {n} directories", {
      store,
      kept: here.kept.join(","),
      n,
    });
  }
  return report;
}
