/** Squashes an incremental chain into one full checkpoint, without the VM. */
import { join, relative } from "node:path";
import * as libc from "../ffi/libc.ts";
import { type FragmentSummary, FragmentWriter } from "./fragment_writer.ts";
import { commitManifest, type Manifest } from "./manifest.ts";
import { buildPageMap, compressPageMap, expandPageMap } from "./page_map.ts";
import { OpenCheckpoint } from "./open_checkpoint.ts";
import { CheckpointStore, generationName, resolveCheckpoint } from "./store.ts";
import { CheckpointFormatError } from "./format.ts";
import { checkName, shown } from "../codec/names.ts";
import { PAGE_SIZE } from "../accel/accel.ts";

const BATCH = 4096;

/** Copies pages `gfns` of an open checkpoint into `w`, in batches. */
async function copyPages(ck: OpenCheckpoint, gfns: number[], w: FragmentWriter): Promise<void> {
  const buf = new Uint8Array(BATCH * PAGE_SIZE);
  const base = libc.ptrValue(Deno.UnsafePointer.of(buf));
  for (let i = 0; i < gfns.length; i += BATCH) {
    const part = gfns.slice(i, i + BATCH);
    const offs = part.map((_, k) => k * PAGE_SIZE);
    ck.loadTo(part, buf, base, offs);
    await w.append(part, { bytes: buf, base }, offs);
    await w.flush();
  }
}

/**
 * One host's part of merging a split VM's chain: the pages of `dir`'s checkpoint whose copies are
 * in this host's fragments (`host`) go into one new fragment `gNEW/HOST.frag` of generation
 * `generation`, from the local files only. Not committed: the coordinator commits the merged
 * manifest on every host once every part is written.
 */
export async function mergeHostPart(
  dir: string,
  storeRoot: string,
  host: string,
  generation: number,
  idBytes: Uint8Array,
): Promise<FragmentSummary & { dir: string }> {
  checkName("host", "host", host);
  const { manifest } = resolveCheckpoint(dir);
  const mine = new Set(manifest.fragments.flatMap((f, k) => f.host === host ? [k] : []));
  const ck = OpenCheckpoint.open(dir, mine);
  // A host holding copies of others' fragments writes their merged copies into the same directory.
  const gen = new CheckpointStore(storeRoot).join(generation);
  try {
    const w = FragmentWriter.create(join(gen.dir, `${host}.frag`), {
      checkpointId: idBytes,
      generation,
      compress: manifest.compressed,
    });
    try {
      await copyPages(ck, ck.pagesOf(mine), w);
      return { ...(await w.finish()), dir: gen.dir };
    } catch (e) {
      // Only this part goes: the coordinator's abort removes the generation from every host.
      await w.abort();
      throw e;
    }
  } finally {
    // Until the commit, another writer's clean-up may take the uncommitted part away; the merge's
    // commit then fails and the chain stays as it was.
    gen.release();
    ck.close();
  }
}

/** Writes a new full generation holding exactly the pages of `path`'s checkpoint; returns its number. */
export async function mergeChain(
  path: string,
  storeRoot: string,
): Promise<{ generation: number; dir: string; manifest: Manifest }> {
  const ck = OpenCheckpoint.open(path);
  const store = new CheckpointStore(storeRoot);
  const { generation, dir, release } = store.begin();
  const idBytes = crypto.getRandomValues(new Uint8Array(16));
  const fragPath = join(dir, "main.frag");
  const w = FragmentWriter.create(fragPath, {
    checkpointId: idBytes,
    generation,
    compress: ck.manifest.compressed,
  });
  try {
    const pages = ck.manifest.machine.spec.memSize / PAGE_SIZE;
    await copyPages(ck, Array.from({ length: pages }, (_, g) => g), w);
    const sum = await w.finish();
    const src = ck.manifest;
    const manifest: Manifest = {
      ...src,
      id: Array.from(idBytes, (b) => b.toString(16).padStart(2, "0")).join(""),
      generation,
      parent: null,
      fragments: [{
        path: relative(storeRoot, join(dir, "main.frag")),
        host: "main",
        generation,
        footerCrc: sum.footerCrc,
        pages: sum.pages,
        bytes: sum.fileBytes,
      }],
      pageMap: buildPageMap(pages, 0),
      stats: {
        ...src.stats,
        pagesSaved: sum.pages - sum.zeroPages,
        zeroPages: sum.zeroPages,
        pagesReused: 0,
        bytesWritten: sum.dataBytes,
      },
      mergedFrom: src.generation,
      mergedFromId: src.mergedFromId ?? src.id,
    };
    commitManifest(dir, manifest);
    return { generation, dir, manifest };
  } catch (e) {
    await w.abort();
    Deno.removeSync(dir, { recursive: true });
    throw e;
  } finally {
    release();
    ck.close();
  }
}

/** What one host's part of a split merge wrote. */
export interface MergePart {
  /** The new fragment, relative to the store root. */
  path: string;
  /** Pages it indexes. */
  pages: number;
  /** Of those, zero pages. */
  zeroPages: number;
  /** Page bytes written. */
  dataBytes: number;
  /** File size. */
  fileBytes: number;
  /** CRC-32 of its footer. */
  footerCrc: number;
}

/**
 * The manifest of generation `generation` (id `id`) that merges `src`'s chain: one fragment per
 * host (`parts[k]` written by `hosts[k]`, with copies on `copies[k]`), every page mapped to its
 * host's new fragment; the same consistency point, so it records the id it stands for
 * (`mergedFromId`).
 */
export function mergedManifest(
  src: Manifest,
  hosts: string[],
  parts: MergePart[],
  generation: number,
  id: string,
  copies: string[][] = [],
): Manifest {
  const pages = src.machine.spec.memSize / PAGE_SIZE;
  const to = src.fragments.map((f) => hosts.indexOf(f.host));
  // A part's path comes from another host: only the one its host and generation give is taken.
  const paths = hosts.map((h) =>
    `${generationName(generation)}/${checkName("host", "host", h)}.frag`
  );
  parts.forEach((p, k) => {
    if (p.path !== paths[k]) {
      throw new CheckpointFormatError(
        `${hosts[k]}'s merge part`,
        0,
        `field "path" is ${shown(p.path)}, not ${paths[k]}`,
      );
    }
  });
  return {
    ...src,
    id,
    generation,
    parent: null,
    fragments: parts.map((p, k) => ({
      path: paths[k],
      host: hosts[k],
      generation,
      footerCrc: p.footerCrc,
      pages: p.pages,
      bytes: p.fileBytes,
      ...(copies[k]?.length ? { copies: copies[k] } : {}),
    })),
    pageMap: compressPageMap(expandPageMap(src.pageMap, pages).map((f) => to[f])),
    stats: {
      ...src.stats,
      pagesSaved: parts.reduce((n, p) => n + p.pages - p.zeroPages, 0),
      zeroPages: parts.reduce((n, p) => n + p.zeroPages, 0),
      pagesReused: 0,
      bytesWritten: parts.reduce((n, p) => n + p.dataBytes, 0),
    },
    mergedFrom: src.generation,
    mergedFromId: src.mergedFromId ?? src.id,
  };
}
