/** `dcres ckpt ls|inspect|verify|merge|repair|scrub` (`gc` in gc.ts): look into and maintain checkpoint stores, without a VM. */
import { resolve } from "node:path";
import {
  type CheckpointSummary,
  type GenerationRow,
  inspectCheckpoint,
  listGenerations,
  summarizeCheckpoint,
  verifyCheckpoint,
} from "../ckpt/inspect.ts";
import { agentAddr, agentCalls, remoteCall } from "./remote.ts";
import { mergeChain } from "../ckpt/merge.ts";
import { mergeSplit } from "../coord/split_merge.ts";
import { resolveCheckpoint } from "../ckpt/store.ts";
import { EXIT, type GlobalOptions, report } from "./context.ts";
import { fmtBytes, UsageError } from "./units.ts";
import { repairCheckpoint, type RepairReport } from "./repair.ts";
import { gcLines, gcThrough, keepFlag } from "./gc.ts";
import { retainStore } from "../ckpt/retention.ts";
import { table } from "./vm.ts";

/** `ckpt ls DIR`: every generation, committed or interrupted. */
export async function ckptLs(g: GlobalOptions, dir: string): Promise<number> {
  const rows = agentAddr(g)
    ? await remoteCall<GenerationRow[]>(g, "ckpt.ls", { path: dir })
    : listGenerations(resolve(dir));
  report(g, rows, () =>
    rows.length === 0 ? `no checkpoints in ${dir}` : table(
      ["GEN", "STATUS", "VM", "MODE", "PARENT", "SIZE", "CREATED"],
      rows.map((r) => {
        const x = r as Partial<
          { vm: string; mode: string; parent: number | null; bytes: number; createdAt: string }
        >;
        return [
          String(r.generation),
          r.status,
          x.vm ?? "",
          x.mode ?? "",
          x.parent ? String(x.parent) : "-",
          x.bytes ? fmtBytes(x.bytes) : "",
          x.createdAt ?? "",
        ];
      }),
    ));
  return EXIT.OK;
}

/** `ckpt inspect DIR`: generation, chain, mode, pages, sizes, holders, timings of the latest (or given) generation. */
export async function ckptInspect(g: GlobalOptions, path: string): Promise<number> {
  const s = agentAddr(g)
    ? await remoteCall<CheckpointSummary>(g, "ckpt.inspect", { path })
    : summarizeCheckpoint(inspectCheckpoint(resolve(path)));
  const where = (f: CheckpointSummary["fragments"][number]) => {
    const holders = [f.host, ...(f.copies ?? [])];
    return holders.map((h) => s.addrs?.[h] ? `${h} (${s.addrs[h]})` : h).join(", ");
  };
  report(g, s, () =>
    [
      `${s.dir}: generation ${s.generation} of VM ${s.vm} (${s.guest}, ${
        fmtBytes(s.memSize)
      }, ${s.vcpus} vCPU, taken on ${s.accel}${s.host ? ` by host ${s.host}` : ""})`,
      `  mode ${s.mode}${s.compressed ? ", zstd" : ""}; ${
        s.parent !== null ? `incremental on ${s.parent}` : "full"
      }; chain ${s.chain.join(" <- ")}${s.mergedFrom ? `; merged from ${s.mergedFrom}` : ""}`,
      `  pages saved ${s.stats.pagesSaved}, zero ${s.stats.zeroPages}, reused ${s.stats.pagesReused}, saved twice ${s.stats.pagesSavedTwice}`,
      `  written ${fmtBytes(s.stats.bytesWritten)}; ${s.stats.rounds} round(s), downtime ${
        s.stats.downtimeMs.toFixed(1)
      } ms, total ${s.stats.totalMs.toFixed(0)} ms`,
      ...s.fragments.map((f) =>
        `  fragment ${f.path}: ${f.pages} pages, ${fmtBytes(f.bytes)}; held by ${where(f)}`
      ),
      `  written by dcres ${s.dcresVersion} at ${s.createdAt}`,
    ].join("\n"));
  return EXIT.OK;
}

/** `ckpt verify DIR`: every checksum of every file the checkpoint uses; fails on the first problem. */
export async function ckptVerify(g: GlobalOptions, path: string): Promise<number> {
  const r: ReturnType<typeof verifyCheckpoint> & { replacedDamaged?: string[] } = agentAddr(g)
    ? await remoteCall(g, "ckpt.verify", { path })
    : verifyCheckpoint(resolve(path));
  report(
    g,
    { ok: true, ...r },
    () =>
      `OK: ${r.dir}: ${r.pages} pages in ${r.fragments} fragment(s) verified` +
      (r.elsewhere.length
        ? `; ${r.elsewhere.length} fragment(s) are on other hosts (verify them there): ${
          r.elsewhere.map((f) => `${f.host} ${f.path}`).join(", ")
        }`
        : "") +
      (r.replacedDamaged?.length
        ? `; damaged copies set aside and replaced from another holder: ${
          r.replacedDamaged.join(", ")
        }`
        : ""),
  );
  return EXIT.OK;
}

/** `ckpt repair ID` (through an agent): every copy of a checkpoint's fragments back in place. */
export async function ckptRepair(g: GlobalOptions, path: string): Promise<number> {
  const source = agentAddr(g);
  if (!source) throw new UsageError("ckpt repair works through an agent: give --agent HOST:PORT");
  const r = await repairCheckpoint(g, source, path);
  report(g, r, () =>
    [
      `checkpoint ${r.id}: ${r.copiesWhole} of ${r.copiesWanted} copies of ${r.fragments} fragment(s) were whole; ${r.repaired.length} repaired (${
        fmtBytes(r.repaired.reduce((a, x) => a + x.bytes, 0))
      }) in ${r.ms.toFixed(0)} ms`,
      ...r.repaired.map((x) => `  ${x.file}: copied from ${x.from} to ${x.to}`),
      ...r.failed.map((x) => `  not repaired: ${x}`),
    ].join("\n"));
  return r.failed.length ? EXIT.FAILURE : EXIT.OK;
}

/** `ckpt scrub` (through an agent): re-read its copies; replace each damaged one from a whole copy. */
export async function ckptScrub(g: GlobalOptions, store?: string): Promise<number> {
  const source = agentAddr(g);
  if (!source) throw new UsageError("ckpt scrub works through an agent: give --agent HOST:PORT");
  const r = await remoteCall<
    { files: number; bytes: number; damaged: Array<{ store: string; file: string; error: string }> }
  >(g, "ckpt.scrub", store === undefined ? {} : { store }, undefined, 3_600_000);
  const generations = [...new Set(r.damaged.map((d) => `${d.store}/${d.file.split("/")[0]}`))];
  const repairs: RepairReport[] = [];
  for (const gen of generations) repairs.push(await repairCheckpoint(g, source, gen));
  const failed = repairs.flatMap((x) => x.failed);
  report(g, { ...r, repairs }, () =>
    [
      `scrubbed ${r.files} fragment copies (${
        fmtBytes(r.bytes)
      }) on ${source}: ${r.damaged.length} damaged`,
      ...r.damaged.map((d) => `  damaged, set aside: ${d.store}/${d.file}: ${d.error}`),
      ...repairs.flatMap((x) => x.repaired.map((c) => `  repaired ${c.file} from ${c.from}`)),
      ...failed.map((x) => `  not repaired: ${x}`),
    ].join("\n"));
  return failed.length ? EXIT.FAILURE : EXIT.OK;
}

/**
 * `ckpt merge DIR`: squash the latest chain into one full generation; then what it squashed goes,
 * unless `--keep` (default: every checkpoint) keeps it.
 */
export async function ckptMerge(
  g: GlobalOptions,
  path: string,
  f: { keep?: string } = {},
): Promise<number> {
  const keep = keepFlag(f.keep);
  const source = agentAddr(g);
  if (source) {
    const r = await mergeSplit(agentCalls(g), source, path);
    const gc = await gcThrough(g, source, r.store, keep);
    report(
      g,
      { ...r, gc },
      () =>
        [
          `merged generation ${r.mergedFrom}'s chain into full generation ${r.generation} (checkpoint ${r.id}) on ${
            Object.keys(r.pages).length
          } host(s) in ${r.ms.toFixed(0)} ms`,
          ...gcLines(gc),
        ].join("\n"),
    );
    return gc.some((s) => Object.keys(s.failed).length) ? EXIT.FAILURE : EXIT.OK;
  }
  const { root, dir } = resolveCheckpoint(resolve(path));
  const r = await mergeChain(dir, root);
  const gc = retainStore(root, keep);
  report(
    g,
    { generation: r.generation, dir: r.dir, mergedFrom: r.manifest.mergedFrom, gc },
    () =>
      `merged generation ${r.manifest.mergedFrom}'s chain into full generation ${r.generation} (${r.dir}); removed ${gc.removed.length} generation(s) no kept checkpoint needs`,
  );
  return EXIT.OK;
}
