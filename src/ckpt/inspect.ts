/** Looking into checkpoint stores without a VM: list generations, describe one, verify every checksum. */
import { join } from "node:path";
import * as libc from "../ffi/libc.ts";
import { type Manifest, readManifest } from "./manifest.ts";
import { OpenCheckpoint } from "./open_checkpoint.ts";
import { CheckpointStore, resolveCheckpoint } from "./store.ts";
import { PAGE_SIZE } from "../accel/accel.ts";

/** One generation as `ckpt ls` shows it. */
export interface GenerationRow {
  /** Generation number. */
  generation: number;
  /** Its directory. */
  dir: string;
  /** "ok", "incomplete", or "damaged: why". */
  status: string;
  /** VM name. */
  vm?: string;
  /** Mode. */
  mode?: string;
  /** Parent generation. */
  parent?: number | null;
  /** Consistency point time. */
  createdAt?: string;
  /** Bytes this generation wrote. */
  bytes?: number;
  /** Checkpoint id (hex). */
  id?: string;
  /** For a merged generation: the id of the checkpoint it stands for (the same consistency point). */
  mergedFromId?: string;
}

/** Every generation of a store, committed or interrupted. */
export function listGenerations(dir: string): GenerationRow[] {
  return new CheckpointStore(dir).generations().map((e) => {
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
        id: m.id,
        vm: m.vm,
        mode: m.mode,
        parent: m.parent,
        createdAt: m.createdAt,
        bytes,
        ...(m.mergedFromId ? { mergedFromId: m.mergedFromId } : {}),
      };
    } catch (err) {
      return { generation: e.generation, dir: e.dir, status: `damaged: ${(err as Error).message}` };
    }
  });
}

/** What `ckpt inspect` reports. */
export interface CheckpointInfo {
  /** Generation directory. */
  dir: string;
  /** The manifest. */
  manifest: Manifest;
  /** Generations whose fragments it uses. */
  chain: number[];
}

/** Describes the latest generation of a store, or one generation directory. */
export function inspectCheckpoint(path: string): CheckpointInfo {
  const { dir, manifest } = resolveCheckpoint(path);
  return { dir, manifest, chain: [...new Set(manifest.fragments.map((f) => f.generation))] };
}

/** What `ckpt inspect` shows of a checkpoint, locally and through an agent alike. */
export interface CheckpointSummary {
  /** Generation directory. */
  dir: string;
  /** Checkpoint id. */
  id: string;
  /** VM name. */
  vm: string;
  /** dcres version that wrote it. */
  dcresVersion: string;
  /** Generation number. */
  generation: number;
  /** The generation it is incremental on; null for a full checkpoint. */
  parent: number | null;
  /** Generations whose fragments it uses. */
  chain: number[];
  /** Checkpoint mode. */
  mode: string;
  /** Whether pages are zstd-compressed. */
  compressed: boolean;
  /** When it was taken (ISO time). */
  createdAt: string;
  /** Guest memory size, bytes. */
  memSize: number;
  /** Guest kind. */
  guest: string;
  /** vCPUs. */
  vcpus: number;
  /** The accelerator it was taken on. */
  accel: string;
  /** The host (certificate name) that took it, when recorded (manifest 1.4). */
  host?: string;
  /** Each writer's and copy holder's agent address, when recorded (manifest 1.4). */
  addrs?: Record<string, string>;
  /** Its fragments: where each is, its pages and size, and which hosts hold copies. */
  fragments: Array<{
    path: string;
    host: string;
    generation: number;
    pages: number;
    bytes: number;
    copies?: string[];
  }>;
  /** Timings and counts. */
  stats: Manifest["stats"];
  /** For a merged checkpoint: the generation whose chain it squashed. */
  mergedFrom?: number;
}

/** The summary `ckpt inspect` shows of `info`. */
export function summarizeCheckpoint(info: CheckpointInfo): CheckpointSummary {
  const m = info.manifest;
  return {
    dir: info.dir,
    id: m.id,
    vm: m.vm,
    dcresVersion: m.dcresVersion,
    generation: m.generation,
    parent: m.parent,
    chain: info.chain,
    mode: m.mode,
    compressed: m.compressed,
    createdAt: m.createdAt,
    memSize: m.machine.spec.memSize,
    guest: m.machine.spec.guest,
    vcpus: m.machine.spec.vcpus,
    accel: m.machine.vm.accel,
    ...(m.host === undefined ? {} : { host: m.host }),
    ...(m.addrs === undefined ? {} : { addrs: m.addrs }),
    fragments: m.fragments.map((f) => ({
      path: f.path,
      host: f.host,
      generation: f.generation,
      pages: f.pages,
      bytes: f.bytes,
      ...(f.copies === undefined ? {} : { copies: f.copies }),
    })),
    stats: m.stats,
    ...(m.mergedFrom === undefined ? {} : { mergedFrom: m.mergedFrom }),
  };
}

/** Checks every checksum of every file the checkpoint uses; throws on the first problem. */
export function verifyCheckpoint(
  path: string,
  localOnly = false,
): {
  dir: string;
  pages: number;
  fragments: number;
  elsewhere: Array<{ host: string; path: string }>;
} {
  const { root, manifest } = resolveCheckpoint(path);
  const here = (f: { path: string }) => {
    try {
      // lstat: a planted symlink counts as here, so the reader refuses it instead of skipping it.
      Deno.lstatSync(join(root, f.path));
      return true;
    } catch {
      return false;
    }
  };
  // A split VM's checkpoint keeps each host's fragments on that host: through an agent, the ones
  // here are verified and the others named.
  const only = localOnly
    ? new Set(manifest.fragments.flatMap((f, k) => here(f) ? [k] : []))
    : undefined;
  const elsewhere = manifest.fragments.filter((_, k) => only && !only.has(k)).map((f) => ({
    host: f.host,
    path: f.path,
  }));
  const ck = OpenCheckpoint.open(path, only);
  try {
    const pages = readEveryPage(ck, only);
    return { dir: ck.dir, pages, fragments: ck.readers.filter((r) => r).length, elsewhere };
  } finally {
    ck.close();
  }
}

/**
 * Reads and checks every page of `ck` (of the fragments `only`, when given) and every chunk's
 * checksum; throws the first damage found. Returns the pages read. `pace` hears of each batch's
 * bytes before it is read (a background scrub waits there to keep to its rate).
 */
export function readEveryPage(
  ck: OpenCheckpoint,
  only?: ReadonlySet<number>,
  pace?: (bytes: number) => void,
): number {
  for (const r of ck.readers) r?.verifyChunks();
  const all = ck.manifest.machine.spec.memSize / PAGE_SIZE;
  const gfns = only ? ck.pagesOf(only) : Array.from({ length: all }, (_, g) => g);
  const batch = 4096;
  const buf = new Uint8Array(batch * PAGE_SIZE);
  const base = libc.ptrValue(Deno.UnsafePointer.of(buf));
  for (let s = 0; s < gfns.length; s += batch) {
    const part = gfns.slice(s, s + batch);
    pace?.(part.length * PAGE_SIZE);
    ck.loadTo(part, buf, base, part.map((_, i) => i * PAGE_SIZE));
  }
  return gfns.length;
}
