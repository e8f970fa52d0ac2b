/** Looking into checkpoint stores without a VM: list generations, describe one, verify every checksum. */
import * as libc from "../ffi/libc.ts";
import { PAGE } from "./format.ts";
import { type Manifest, readManifest } from "./manifest.ts";
import { OpenCheckpoint } from "./restore.ts";
import { CheckpointStore, resolveCheckpoint } from "./store.ts";

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

/** Checks every checksum of every file the checkpoint uses; throws on the first problem. */
export function verifyCheckpoint(path: string): { dir: string; pages: number; fragments: number } {
  const ck = OpenCheckpoint.open(path);
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
    return { dir: ck.dir, pages, fragments: ck.readers.length };
  } finally {
    ck.close();
  }
}
