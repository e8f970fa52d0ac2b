/**
 * A checkpoint store: one directory holding generations `g000001/`, `g000002/`, ... of one VM. A
 * generation exists once its MANIFEST is committed; a directory without one is a checkpoint that was
 * interrupted, ignored by readers and removed by the next writer.
 */
import { join } from "node:path";
import { type Manifest, MANIFEST_FILE, readManifest } from "./manifest.ts";
import { fsyncDir } from "../ffi/atomic_file.ts";
import { CheckpointFormatError } from "./format.ts";
import type { MachineSpec } from "../vmm/machine.ts";

/** A generation directory as found on disk. */
export interface GenerationEntry {
  /** Generation number. */
  generation: number;
  /** Its directory. */
  dir: string;
  /** True once its manifest was committed. */
  committed: boolean;
}

/** No usable checkpoint in a directory; the message says what is there. */
export class NoCheckpointError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "NoCheckpointError";
  }
}

const GEN = /^g(\d{6,})$/;

/** Name of generation `n`'s directory. */
export function generationName(n: number): string {
  return `g${String(n).padStart(6, "0")}`;
}

/**
 * The newest generation `host` reported holding (its `ckpt.newest`), checked before it sets the
 * next generation's number. A checkpoint or merge killed after another host committed and before
 * this one did leaves such a generation there, named by no manifest here: it is passed by, never
 * reused, so nothing already on disk is overwritten or refused.
 */
export function reportedGeneration(host: string, r: { generation?: unknown }): number {
  const g = r.generation;
  if (!Number.isSafeInteger(g) || (g as number) < 0 || (g as number) > 999_999_999) {
    throw new Error(`${host} reported its newest generation as ${JSON.stringify(g)}`);
  }
  return g as number;
}

/** A store directory. */
export class CheckpointStore {
  constructor(
    /** Its directory. */
    readonly root: string,
  ) {}

  /** Every generation directory, ascending. */
  generations(): GenerationEntry[] {
    let entries: Deno.DirEntry[];
    try {
      entries = [...Deno.readDirSync(this.root)];
    } catch {
      return [];
    }
    return entries
      .filter((e) => e.isDirectory && GEN.test(e.name))
      .map((e) => {
        const dir = join(this.root, e.name);
        let committed = false;
        try {
          committed = Deno.statSync(join(dir, MANIFEST_FILE)).isFile;
        } catch {
          committed = false;
        }
        return { generation: Number(GEN.exec(e.name)![1]), dir, committed };
      })
      .sort((a, b) => a.generation - b.generation);
  }

  /** The newest committed generation's manifest, or undefined when there is none. */
  latest(): { dir: string; manifest: Manifest } | undefined {
    const committed = this.generations().filter((g) => g.committed);
    const last = committed[committed.length - 1];
    return last && { dir: last.dir, manifest: readManifest(last.dir) };
  }

  /** Removes interrupted generations; returns their directories. */
  cleanIncomplete(): string[] {
    const removed: string[] = [];
    for (const g of this.generations()) {
      if (g.committed) continue;
      Deno.removeSync(g.dir, { recursive: true });
      removed.push(g.dir);
    }
    return removed;
  }

  /**
   * Creates the directory of the next generation (after cleaning interrupted ones), above `after`
   * too: the newest generation another participant already holds.
   */
  begin(after = 0): { generation: number; dir: string } {
    Deno.mkdirSync(this.root, { recursive: true });
    this.cleanIncomplete();
    const gens = this.generations();
    return this.beginAt(Math.max(gens[gens.length - 1]?.generation ?? 0, after) + 1);
  }

  /** The newest committed generation, or 0. */
  newestCommitted(): number {
    return this.generations().filter((g) => g.committed).pop()?.generation ?? 0;
  }

  /**
   * Creates the directory of generation `generation`, which a split VM's main host chose for every
   * participant; refused when this store already has it or a later one.
   */
  beginAt(generation: number): { generation: number; dir: string } {
    Deno.mkdirSync(this.root, { recursive: true });
    this.cleanIncomplete();
    const last = this.generations().pop()?.generation ?? 0;
    if (generation <= last) {
      throw new NoCheckpointError(
        `${this.root} already has generation ${last}; cannot write generation ${generation} here (remove the stale store, or checkpoint into another)`,
      );
    }
    const dir = join(this.root, generationName(generation));
    Deno.mkdirSync(dir, { mode: 0o700 });
    fsyncDir(this.root);
    return { generation, dir };
  }
}

/**
 * The file of a manifest's fragment path `rel` (already of the fragment-path grammar) in store
 * `root`; refused when its generation directory is a symlink, which could lead anywhere.
 */
export function fragmentFile(root: string, rel: string): string {
  const file = join(root, rel);
  const gen = rel.slice(0, rel.indexOf("/"));
  let st: Deno.FileInfo;
  try {
    st = Deno.lstatSync(join(root, gen));
  } catch {
    return file; // missing: the reader's open says so
  }
  if (!st.isDirectory) {
    throw new CheckpointFormatError(
      file,
      0,
      `fragment path: generation ${gen} is not a directory of the store (a symlink?)`,
    );
  }
  return file;
}

/** Resolves a restore target: a store (its latest generation) or one generation directory. */
export function resolveCheckpoint(path: string): { root: string; dir: string; manifest: Manifest } {
  let isGen = false;
  try {
    Deno.statSync(join(path, MANIFEST_FILE));
    isGen = true;
  } catch {
    isGen = false;
  }
  if (isGen) return { root: join(path, ".."), dir: path, manifest: readManifest(path) };
  const store = new CheckpointStore(path);
  const gens = store.generations();
  if (gens.length === 0) {
    throw new NoCheckpointError(
      `${path}: no checkpoints here; take one with 'dcres checkpoint NAME --out ${path}'`,
    );
  }
  const latest = store.latest();
  if (!latest) {
    throw new NoCheckpointError(
      `${path}: no committed checkpoint (only interrupted ones: ${
        gens.map((g) => g.dir).join(", ")
      })`,
    );
  }
  return { root: path, ...latest };
}

/** The machine spec a restore of the checkpoint at `path` runs under: its own, renamed to `name`. */
export function targetSpecOf(path: string, name?: string): MachineSpec {
  const spec = structuredClone(resolveCheckpoint(path).manifest.machine.spec);
  if (name) spec.name = name;
  return spec;
}
