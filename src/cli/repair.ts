/**
 * `dcres ckpt repair ID`: every copy of a checkpoint's fragments (a split or a one-host VM's) back where its manifest says
 * it is. Each host the manifest names as holding a fragment (its writer and its copies) is asked
 * what it has; a copy that is missing or was cut short is pushed there again, agent to agent, from a
 * whole one, and then the manifest of its generation, so the copy is part of a committed generation
 * there. Committed manifests never change, so a copy goes back to the host that held it.
 */
import { dirname } from "node:path";
import { checkPlan } from "../agent/plan_reply.ts";
import type { GlobalOptions } from "./context.ts";
import { agentCalls } from "./remote.ts";
import { askHolders, holderAddress } from "../coord/holders.ts";
import { pushFile } from "../coord/store_push.ts";

/** What a repair found and did. */
export interface RepairReport {
  /** Checkpoint id. */
  id: string;
  /** Fragments checked. */
  fragments: number;
  /** Copies each fragment should have (its holders in the manifest). */
  copiesWanted: number;
  /** Copies that were whole already. */
  copiesWhole: number;
  /** Copies pushed back, and their bytes. */
  repaired: Array<{ file: string; to: string; from: string; bytes: number }>;
  /** Copies that could not be repaired, each with why. */
  failed: string[];
  /** Wall time. */
  ms: number;
}

/** Repairs checkpoint `path` (found through agent `source`). */
export async function repairCheckpoint(
  g: GlobalOptions,
  source: string,
  path: string,
): Promise<RepairReport> {
  const t0 = performance.now();
  const calls = agentCalls(g);
  const plan = checkPlan(source, await calls.call<unknown>(source, "ckpt.plan", { path }));
  const addrOf = (n: string) => holderAddress(plan, source, n);
  const want = new Map<string, Set<string>>();
  for (const f of plan.fragments) {
    for (const h of [f.host, ...(f.copies ?? [])]) {
      const a = addrOf(h);
      if (!a) continue;
      const files = want.get(a) ?? new Set();
      files.add(f.path).add(`${dirname(f.path)}/MANIFEST`);
      want.set(a, files);
    }
  }
  const have = await askHolders(calls, plan.store, want);
  const sizeAt = (a: string, file: string) => {
    const h = have.get(a);
    return h && "sizes" in h ? h.sizes[file] : undefined;
  };
  const report: RepairReport = {
    id: plan.id,
    fragments: plan.fragments.length,
    copiesWanted: 0,
    copiesWhole: 0,
    repaired: [],
    failed: [],
    ms: 0,
  };
  const manifestsTo = new Map<string, Set<string>>();
  await Promise.all(plan.fragments.map(async (f) => {
    const holders = [f.host, ...(f.copies ?? [])].map((h) => ({ h, a: addrOf(h) }));
    report.copiesWanted += holders.length;
    const whole = holders.filter(({ a }) => a && sizeAt(a, f.path) === f.bytes).map(({ a }) => a!);
    report.copiesWhole += whole.length;
    for (const { h, a } of holders) {
      if (a && sizeAt(a, f.path) === f.bytes) continue;
      const h_ = a ? have.get(a) : undefined;
      if (!a || !h_ || "error" in h_) {
        report.failed.push(
          `${f.path} on ${h}: ${
            a ? (h_ as { error: string }).error : "address unknown (repair through the main host)"
          }`,
        );
        continue;
      }
      if (h_.sizes[f.path] !== undefined) {
        report.failed.push(
          `${f.path} on ${h}: a damaged copy of ${
            h_.sizes[f.path]
          } bytes (not ${f.bytes}) is in the way; 'dcres ckpt scrub' sets it aside`,
        );
        continue;
      }
      const from = whole[report.repaired.length % Math.max(1, whole.length)];
      if (!from) {
        report.failed.push(`${f.path} on ${h}: no whole copy is left anywhere`);
        continue;
      }
      const bytes = await pushFile(
        calls,
        from,
        a,
        plan.store,
        f.path,
        h_.partial[f.path] ?? 0,
        true,
      );
      report.repaired.push({ file: f.path, to: a, from, bytes });
      const m = manifestsTo.get(a) ?? new Set();
      manifestsTo.set(a, m.add(`${dirname(f.path)}/MANIFEST`));
    }
  }));
  // Manifests last: a copy is complete before its generation is committed there.
  for (const [a, files] of manifestsTo) {
    for (const file of files) {
      if (sizeAt(a, file) !== undefined) continue;
      const from = [...have.keys()].find((b) => b !== a && sizeAt(b, file) !== undefined);
      if (!from) {
        report.failed.push(`${file} on ${a}: no host has this manifest to copy`);
        continue;
      }
      await pushFile(calls, from, a, plan.store, file, 0);
    }
  }
  report.ms = performance.now() - t0;
  return report;
}
