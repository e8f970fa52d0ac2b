/** Squashes an incremental chain into one full checkpoint, without the VM. */
import { join, relative } from "node:path";
import * as libc from "../ffi/libc.ts";
import { PAGE } from "./format.ts";
import { FragmentWriter } from "./fragment_writer.ts";
import { commitManifest, type Manifest } from "./manifest.ts";
import { buildPageMap } from "./page_map.ts";
import { OpenCheckpoint } from "./restore.ts";
import { CheckpointStore } from "./store.ts";

const BATCH = 4096;

/** Writes a new full generation holding exactly the pages of `path`'s checkpoint; returns its number. */
export async function mergeChain(
  path: string,
  storeRoot: string,
): Promise<{ generation: number; dir: string; manifest: Manifest }> {
  const ck = OpenCheckpoint.open(path);
  const store = new CheckpointStore(storeRoot);
  const { generation, dir } = store.begin();
  const idBytes = crypto.getRandomValues(new Uint8Array(16));
  const fragPath = join(dir, "main.frag");
  const w = FragmentWriter.create(fragPath, {
    checkpointId: idBytes,
    generation,
    compress: ck.manifest.compressed,
  });
  try {
    const pages = ck.manifest.machine.spec.memSize / PAGE;
    const buf = new Uint8Array(BATCH * PAGE);
    const base = libc.ptrValue(Deno.UnsafePointer.of(buf));
    for (let g = 0; g < pages; g += BATCH) {
      const gfns = Array.from({ length: Math.min(BATCH, pages - g) }, (_, i) => g + i);
      const offs = gfns.map((_, i) => i * PAGE);
      buf.fill(0);
      ck.loadTo(gfns, buf, base, offs);
      await w.append(gfns, { bytes: buf, base }, offs);
      await w.flush();
    }
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
    };
    commitManifest(dir, manifest);
    return { generation, dir, manifest };
  } catch (e) {
    await w.abort();
    Deno.removeSync(dir, { recursive: true });
    throw e;
  } finally {
    ck.close();
  }
}
