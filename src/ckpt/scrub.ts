/**
 * Scrubbing: every fragment a committed generation here wrote (or holds a copy of) is read again,
 * each checksum checked against the manifest that names it, so rot is found before an incident
 * needs the copy. Each fragment is checked on its own, so one damaged copy hides no other.
 */
import { basename, dirname, join } from "node:path";
import { type Manifest, readManifest } from "./manifest.ts";
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

/** How a scrub reads: all at once, or kept to a rate (bytes per second) by a token bucket. */
export interface ScrubPace {
  /** Bytes per second; 0 or absent: as fast as the disk goes. */
  rate?: number;
}

/** A token bucket over a blocking wait: the Worker a scrub runs in has nothing else to do. */
function bucket(rate: number | undefined): ((bytes: number) => void) | undefined {
  if (!rate) return undefined;
  const nap = new Int32Array(new SharedArrayBuffer(4));
  let owed = 0, t0 = performance.now();
  return (bytes) => {
    owed += bytes;
    const wait = (owed / rate) * 1000 - (performance.now() - t0);
    // A scrub that fell behind (a slow disk) does not read faster later to catch up.
    if (wait < 0) [owed, t0] = [0, performance.now()];
    else Atomics.wait(nap, 0, 0, wait);
  };
}

/** Checks fragment `k` of generation `dir`'s manifest `m`, stored at `root/store`; undefined if absent. */
function scrubFragment(
  root: string,
  store: string,
  dir: string,
  m: Manifest,
  k: number,
  pace?: (bytes: number) => void,
): ScrubbedFile | undefined {
  const f = m.fragments[k];
  let bytes: number;
  try {
    bytes = Deno.lstatSync(join(root, store, f.path)).size;
  } catch {
    return undefined; // held elsewhere
  }
  const row: ScrubbedFile = { store, file: f.path, bytes };
  try {
    const ck = OpenCheckpoint.open(dir, new Set([k]));
    try {
      readEveryPage(ck, new Set([k]), pace);
    } finally {
      ck.close();
    }
  } catch (e) {
    row.error = (e as Error).message;
  }
  return row;
}

/** Scrubs every store under `root`, or only `store`; returns every fragment read. */
export function scrubStores(root: string, store?: string, pace: ScrubPace = {}): ScrubbedFile[] {
  const stores = store !== undefined
    ? [store]
    : [...Deno.readDirSync(root)].filter((e) => e.isDirectory).map((e) => e.name).sort();
  const out: ScrubbedFile[] = [];
  const wait = bucket(pace.rate);
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
        const row = scrubFragment(root, s, g.dir, m, k, wait);
        if (row) out.push(row);
      });
    }
  }
  return out;
}

/**
 * Scrubs every fragment the generation in `dir` uses that is here (or only `file`), its parents'
 * too (what a restore or verify of it reads), at full speed: the check after such a read failed.
 */
export function scrubGeneration(dir: string, file?: string): ScrubbedFile[] {
  const m = readManifest(dir);
  const store = dirname(dir);
  return m.fragments.flatMap((f, k) =>
    file !== undefined && f.path !== file
      ? []
      : scrubFragment(dirname(store), basename(store), dir, m, k) ?? []
  );
}
