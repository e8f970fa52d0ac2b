/**
 * `dcres ckpt gc [STORE]`: removes what no kept generation references. Through an agent, that
 * agent decides from its stores (every consistency point, or `--keep N`), removes the rest there,
 * and every other host its manifests name (writers and holders of copies) is asked to remove the
 * same; without one, STORE is a local store directory.
 */
import { resolve } from "node:path";
import type { StoreGc } from "../agent/retention.ts";
import { type Pruned, retainStore } from "../ckpt/retention.ts";
import { prunedOf } from "../paging/split_retention.ts";
import { EXIT, type GlobalOptions, report } from "./context.ts";
import { agentAddr, remoteCall } from "./remote.ts";
import { fmtBytes, UsageError } from "./units.ts";

/** What gc did in one store. */
export interface StoreGcReport {
  /** The store. */
  store: string;
  /** The generations kept. */
  kept: number[];
  /** Generation directories removed, by host. */
  removed: Record<string, Pruned[]>;
  /** Hosts not reached, each with why (they keep more than needed until the next gc). */
  failed: Record<string, string>;
}

/** `--keep` as given on the command line: a whole number of generations, or absent. */
export function keepFlag(v: string | undefined): number | undefined {
  if (v === undefined) return undefined;
  const n = Number(v);
  if (!/^\d+$/.test(v) || !Number.isSafeInteger(n) || n < 1) {
    throw new UsageError(`--keep ${v}: give a whole number of generations, at least 1`);
  }
  return n;
}

/** Runs gc through agent `source` over `store` (all of its stores when absent). */
export async function gcThrough(
  g: GlobalOptions,
  source: string,
  store: string | undefined,
  keep: number | undefined,
): Promise<StoreGcReport[]> {
  const r = await remoteCall<{ host?: string; stores: StoreGc[] }>(
    { ...g, agent: source },
    "ckpt.gc",
    { ...(store === undefined ? {} : { store }), ...(keep === undefined ? {} : { keep }) },
  );
  return await Promise.all(r.stores.map(async (s) => {
    const out: StoreGcReport = {
      store: s.store,
      kept: s.kept,
      removed: { [r.host ?? source]: s.removed },
      failed: {},
    };
    await Promise.all(s.others.map(async (o) => {
      if (!o.addr) {
        out.failed[o.host] = "no manifest records its agent's address";
        return;
      }
      try {
        const p = await remoteCall<{ removed?: unknown }>({ ...g, agent: o.addr }, "ckpt.prune", {
          store: s.store,
          keep: s.kept,
          upTo: s.upTo,
        });
        out.removed[o.host] = prunedOf(o.host, p);
      } catch (e) {
        out.failed[o.host] = `${o.addr}: ${(e as Error).message}`;
      }
    }));
    return out;
  }));
}

/** The human lines of gc reports. */
export function gcLines(reports: StoreGcReport[]): string[] {
  return reports.flatMap((s) => {
    const all = Object.values(s.removed).flat();
    return [
      `${s.store}: kept generation(s) ${
        s.kept.join(", ") || "none"
      }; removed ${all.length} generation director${all.length === 1 ? "y" : "ies"} (${
        fmtBytes(all.reduce((a, p) => a + p.bytes, 0))
      })`,
      ...Object.entries(s.removed).filter(([, p]) => p.length).map(([h, p]) =>
        `  ${h}: ${
          p.map((x) =>
            `g${String(x.generation).padStart(6, "0")}${x.committed ? "" : " (interrupted)"}`
          )
            .join(", ")
        } (${fmtBytes(p.reduce((a, x) => a + x.bytes, 0))})`
      ),
      ...Object.entries(s.failed).map(([h, why]) => `  ${h}: not reached: ${why}`),
    ];
  });
}

/** `ckpt gc [STORE] [--keep N]`. */
export async function ckptGc(
  g: GlobalOptions,
  store: string | undefined,
  f: { keep?: string },
): Promise<number> {
  const keep = keepFlag(f.keep);
  const source = agentAddr(g);
  let reports: StoreGcReport[];
  if (source) reports = await gcThrough(g, source, store, keep);
  else {
    if (store === undefined) throw new UsageError("give a store directory, or --agent HOST:PORT");
    const r = retainStore(resolve(store), keep);
    reports = [{ store, kept: r.kept, removed: { local: r.removed }, failed: {} }];
  }
  report(g, reports, () => gcLines(reports).join("\n"));
  return reports.some((s) => Object.keys(s.failed).length) ? EXIT.FAILURE : EXIT.OK;
}
