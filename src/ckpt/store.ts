/**
 * A checkpoint store: one directory holding generations `g000001/`, `g000002/`, ... of one VM. A
 * generation exists once its MANIFEST is committed; a directory without one is a checkpoint that was
 * interrupted, ignored by readers and removed by the next writer.
 */
import { basename, dirname, join } from "node:path";
import { type Manifest, MANIFEST_FILE, readManifest } from "./manifest.ts";
import { fsyncDir } from "../ffi/atomic_file.ts";
import * as libc from "../ffi/libc.ts";
import { CheckpointFormatError } from "./format.ts";
import type { MachineSpec } from "../vmm/machine.ts";
import { isName } from "../codec/names.ts";

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

/** The newest generation a store may reach: its directory name has at most nine digits. */
export const MAX_GENERATION = 999_999_999;

/** The number of generation directory `name`, or undefined when it does not name one. */
export function generationOf(name: string): number | undefined {
  return isName("generation", name) ? Number(name.slice(1)) : undefined;
}

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
  if (!Number.isSafeInteger(g) || (g as number) < 0 || (g as number) > MAX_GENERATION) {
    throw new Error(`${host} reported its newest generation as ${JSON.stringify(g)}`);
  }
  return g as number;
}

/**
 * Marks generation directory `dir` as being written until the returned release is called (or the
 * process ends): a shared flock on the directory, which every writer of it (a checkpoint, a
 * fragment copy coming in, a merge part; in this process or another) takes, so that no other
 * writer's clean-up removes it as interrupted. Refused when `dir` was removed meanwhile.
 */
export function holdGeneration(dir: string): () => void {
  const fd = libc.open(dir, libc.O.RDONLY | libc.O.DIRECTORY);
  libc.flock(fd, libc.LOCK.SH);
  try {
    Deno.statSync(dir);
  } catch {
    libc.close(fd);
    throw new NoCheckpointError(`${dir} was removed as interrupted while it was begun; retry`);
  }
  let held = true;
  return () => {
    if (held) libc.close(fd);
    held = false;
  };
}

/** Prefix of a generation directory being removed: no longer a generation to any reader. */
const REMOVING = ".removing-";

/**
 * Runs `fn` with generation directory `dir` locked exclusively, when no writer holds it
 * (holdGeneration) and it exists; returns whether it ran. No writer takes it up meanwhile.
 */
function whileUnheld(dir: string, fn: () => void): boolean {
  let fd: number;
  try {
    fd = libc.open(dir, libc.O.RDONLY | libc.O.DIRECTORY);
  } catch {
    return false;
  }
  try {
    if (!libc.flock(fd, libc.LOCK.EX | libc.LOCK.NB)) return false;
    fn();
    return true;
  } finally {
    libc.close(fd);
  }
}

/**
 * Removes generation directory `dir` unless a writer holds it; true when removed. It is renamed
 * out of the generations first, so a removal cut short leaves no half generation, only a leftover
 * the next clean-up removes.
 */
export function removeUnheld(dir: string): boolean {
  return whileUnheld(dir, () => {
    const gone = join(dirname(dir), `${REMOVING}${basename(dir)}`);
    Deno.renameSync(dir, gone);
    fsyncDir(dirname(dir));
    Deno.removeSync(gone, { recursive: true });
  });
}

/** True when a writer holds generation directory `dir` (holdGeneration). */
export function isHeld(dir: string): boolean {
  try {
    Deno.statSync(dir);
  } catch {
    return false; // gone: nobody writes it
  }
  return !whileUnheld(dir, () => {});
}

/** Bytes of regular files under `dir`, not following links. */
export function bytesUnder(dir: string): number {
  let n = 0;
  for (const e of Deno.readDirSync(dir)) {
    const p = join(dir, e.name);
    if (e.isDirectory) n += bytesUnder(p);
    else if (e.isFile) n += Deno.lstatSync(p).size;
  }
  return n;
}

/** A generation directory begun here, held (holdGeneration) until `release`. */
export interface BegunGeneration {
  /** Its number. */
  generation: number;
  /** Its directory. */
  dir: string;
  /** Lets other writers' clean-up remove it again, once it is committed or abandoned. */
  release: () => void;
}

/** The entries of directory `dir`, none when it cannot be read. */
function safeEntries(dir: string): Deno.DirEntry[] {
  try {
    return [...Deno.readDirSync(dir)];
  } catch {
    return [];
  }
}

/** A store directory. */
export class CheckpointStore {
  constructor(
    /** Its directory. */
    readonly root: string,
  ) {}

  /** Every generation directory, ascending. */
  generations(): GenerationEntry[] {
    return safeEntries(this.root)
      .filter((e) => e.isDirectory && generationOf(e.name) !== undefined)
      .map((e) => {
        const dir = join(this.root, e.name);
        let committed = false;
        try {
          committed = Deno.statSync(join(dir, MANIFEST_FILE)).isFile;
        } catch {
          committed = false;
        }
        return { generation: generationOf(e.name)!, dir, committed };
      })
      .sort((a, b) => a.generation - b.generation);
  }

  /** The newest committed generation's manifest, or undefined when there is none. */
  latest(): { dir: string; manifest: Manifest } | undefined {
    const committed = this.generations().filter((g) => g.committed);
    const last = committed[committed.length - 1];
    return last && { dir: last.dir, manifest: readManifest(last.dir) };
  }

  /**
   * Removes interrupted generations: uncommitted ones no writer holds (one being written by a
   * checkpoint, a merge or an incoming copy is left alone); returns their directories.
   */
  cleanIncomplete(): string[] {
    for (const e of safeEntries(this.root)) {
      if (e.isDirectory && e.name.startsWith(REMOVING)) {
        Deno.removeSync(join(this.root, e.name), { recursive: true });
      }
    }
    return this.generations().filter((g) => !g.committed && removeUnheld(g.dir)).map((g) => g.dir);
  }

  /**
   * Creates the directory of the next generation (after cleaning interrupted ones), above `after`
   * too: the newest generation another participant already holds.
   */
  begin(after = 0): BegunGeneration {
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
  beginAt(generation: number): BegunGeneration {
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
    const release = holdGeneration(dir);
    fsyncDir(this.root);
    return { generation, dir, release };
  }

  /**
   * Generation `generation`'s directory for one more writer of it (a host writing several merge
   * parts): created when missing, taken up when it is uncommitted; refused when it is committed or
   * a later generation exists.
   */
  join(generation: number): BegunGeneration {
    const dir = join(this.root, generationName(generation));
    // A checkpoint under way (its generation, or a copy of one of its fragments, held here) would
    // commit below the merged generation, which would then pass for the newer checkpoint.
    const running = this.generations().find((g) =>
      !g.committed && g.generation < generation && isHeld(g.dir)
    );
    if (running) {
      throw new NoCheckpointError(
        `${running.dir} is being written (a checkpoint under way); merge once it has committed`,
      );
    }
    const here = this.generations().find((g) => g.generation === generation);
    if (!here) return this.beginAt(generation);
    const last = this.generations().pop()!.generation;
    if (here.committed || last > generation) {
      throw new NoCheckpointError(
        `${this.root} already has generation ${last}; cannot write generation ${generation} here (remove the stale store, or checkpoint into another)`,
      );
    }
    return { generation, dir, release: holdGeneration(dir) };
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
