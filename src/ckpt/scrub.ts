/**
 * Scrubbing: every fragment a committed generation here wrote (or holds a copy of) is read again,
 * each checksum checked against the manifest that names it, so rot is found before an incident
 * needs the copy. Each fragment is checked on its own, so one damaged copy hides no other.
 */
import { basename, join } from "node:path";
import { readManifest } from "./manifest.ts";
import { OpenCheckpoint } from "./open_checkpoint.ts";
import { readEveryPage } from "./inspect.ts";
import { CheckpointStore } from "./store.ts";

/** One stored fragment a scrub read, and the damage it found. */
export interface ScrubbedFile {
  /** Store (directory name under the checkpoint root). */
  store: string;
  /** `gNNNNNN/HOST.frag`. */
  file: string;
  /** Its size. */
  bytes: number;
  /** The damage, in one line; absent when every checksum held. */
  error?: string;
}

/** Scrubs every store under `root`, or only `store`; returns every fragment read. */
export function scrubStores(root: string, store?: string): ScrubbedFile[] {
  const stores = store !== undefined
    ? [store]
    : [...Deno.readDirSync(root)].filter((e) => e.isDirectory).map((e) => e.name).sort();
  const out: ScrubbedFile[] = [];
  for (const s of stores) {
    for (const g of new CheckpointStore(join(root, s)).generations()) {
      if (!g.committed) continue;
      let m;
      try {
        m = readManifest(g.dir);
      } catch (e) {
        out.push({ store: s, file: `${basename(g.dir)}/MANIFEST`, bytes: 0, error: String(e) });
        continue;
      }
      m.fragments.forEach((f, k) => {
        if (f.generation !== m.generation) return; // its own generation scrubs it
        let bytes: number;
        try {
          bytes = Deno.lstatSync(join(root, s, f.path)).size;
        } catch {
          return; // held elsewhere
        }
        const row: ScrubbedFile = { store: s, file: f.path, bytes };
        try {
          const ck = OpenCheckpoint.open(g.dir, new Set([k]));
          try {
            readEveryPage(ck, new Set([k]));
          } finally {
            ck.close();
          }
        } catch (e) {
          row.error = (e as Error).message;
        }
        out.push(row);
      });
    }
  }
  return out;
}
