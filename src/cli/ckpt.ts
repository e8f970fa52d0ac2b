/** `dcres ckpt ls|inspect|verify|merge DIR`: look into and maintain checkpoint stores, without a VM. */
import { resolve } from "node:path";
import * as libc from "../ffi/libc.ts";
import { PAGE } from "../ckpt/format.ts";
import { readManifest } from "../ckpt/manifest.ts";
import { mergeChain } from "../ckpt/merge.ts";
import { OpenCheckpoint } from "../ckpt/restore.ts";
import { CheckpointStore, resolveCheckpoint } from "../ckpt/store.ts";
import { EXIT, type GlobalOptions, report } from "./context.ts";
import { fmtBytes } from "./units.ts";
import { table } from "./vm.ts";

/** `ckpt ls DIR`: every generation, committed or interrupted. */
export function ckptLs(g: GlobalOptions, dir: string): number {
  const store = new CheckpointStore(resolve(dir));
  const rows = store.generations().map((e) => {
    if (!e.committed) return { generation: e.generation, dir: e.dir, status: "incomplete" };
    try {
      const m = readManifest(e.dir);
      const bytes = m.fragments.filter((f) => f.generation === m.generation).reduce(
        (a, f) => a + f.bytes,
        0,
      );
      return {
        generation: e.generation,
        dir: e.dir,
        status: "ok",
        vm: m.vm,
        mode: m.mode,
        parent: m.parent,
        createdAt: m.createdAt,
        bytes,
      };
    } catch (err) {
      return { generation: e.generation, dir: e.dir, status: `damaged: ${(err as Error).message}` };
    }
  });
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

/** `ckpt inspect DIR`: generation, chain, mode, pages, sizes, timings of the latest (or given) generation. */
export function ckptInspect(g: GlobalOptions, path: string): number {
  const { dir, manifest: m } = resolveCheckpoint(resolve(path));
  const info = {
    dir,
    id: m.id,
    vm: m.vm,
    dcresVersion: m.dcresVersion,
    generation: m.generation,
    parent: m.parent,
    chain: [...new Set(m.fragments.map((f) => f.generation))],
    mode: m.mode,
    compressed: m.compressed,
    createdAt: m.createdAt,
    memSize: m.machine.spec.memSize,
    guest: m.machine.spec.guest,
    vcpus: m.machine.spec.vcpus,
    fragments: m.fragments.map((f) => ({
      path: f.path,
      host: f.host,
      generation: f.generation,
      pages: f.pages,
      bytes: f.bytes,
    })),
    stats: m.stats,
    mergedFrom: m.mergedFrom,
  };
  report(g, info, () =>
    [
      `${dir}: generation ${m.generation} of VM ${m.vm} (${m.machine.spec.guest}, ${
        fmtBytes(m.machine.spec.memSize)
      }, ${m.machine.spec.vcpus} vCPU)`,
      `  mode ${m.mode}${m.compressed ? ", zstd" : ""}; ${
        m.parent ? `incremental on ${m.parent}` : "full"
      }; chain ${info.chain.join(" <- ")}${m.mergedFrom ? `; merged from ${m.mergedFrom}` : ""}`,
      `  pages saved ${m.stats.pagesSaved}, zero ${m.stats.zeroPages}, reused ${m.stats.pagesReused}, saved twice ${m.stats.pagesSavedTwice}`,
      `  written ${fmtBytes(m.stats.bytesWritten)}; ${m.stats.rounds} round(s), downtime ${
        m.stats.downtimeMs.toFixed(1)
      } ms, total ${m.stats.totalMs.toFixed(0)} ms`,
      ...m.fragments.map((f) => `  fragment ${f.path}: ${f.pages} pages, ${fmtBytes(f.bytes)}`),
      `  written by dcres ${m.dcresVersion} at ${m.createdAt}`,
    ].join("\n"));
  return EXIT.OK;
}

/** `ckpt verify DIR`: every checksum of every file the checkpoint uses; fails on the first problem. */
export function ckptVerify(g: GlobalOptions, path: string): number {
  const ck = OpenCheckpoint.open(resolve(path));
  try {
    for (const r of ck.readers) r.verifyChunks();
    const pages = ck.manifest.machine.spec.memSize / PAGE;
    const batch = 4096;
    const buf = new Uint8Array(batch * PAGE);
    const base = libc.ptrValue(Deno.UnsafePointer.of(buf));
    for (let s = 0; s < pages; s += batch) {
      const gfns = Array.from({ length: Math.min(batch, pages - s) }, (_, i) => s + i);
      ck.loadTo(gfns, buf, base, gfns.map((_, i) => i * PAGE));
    }
    report(
      g,
      { ok: true, dir: ck.dir, pages, fragments: ck.readers.length },
      () => `OK: ${ck.dir}: ${pages} pages in ${ck.readers.length} fragment(s) verified`,
    );
  } finally {
    ck.close();
  }
  return EXIT.OK;
}

/** `ckpt merge DIR`: squash the latest chain into one full generation. */
export async function ckptMerge(g: GlobalOptions, path: string): Promise<number> {
  const { root, dir } = resolveCheckpoint(resolve(path));
  const r = await mergeChain(dir, root);
  report(
    g,
    { generation: r.generation, dir: r.dir, mergedFrom: r.manifest.mergedFrom },
    () =>
      `merged generation ${r.manifest.mergedFrom}'s chain into full generation ${r.generation} (${r.dir})`,
  );
  return EXIT.OK;
}
