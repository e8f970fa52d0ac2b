/**
 * Bulk page transfers between main and its sub-hosts: lists of pages cut into wire-sized batches,
 * grouped by the host they go to, with their contents, and sent several requests at a time.
 */
import type { GuestMemory } from "../memory/guest_memory.ts";
import { indexRuns } from "../memory/runs.ts";
import { MAX_BATCH } from "./wire.ts";
import { PAGE_SIZE } from "../accel/accel.ts";

/** PUT/GET requests in flight during bulk copies. */
const COPY_STREAMS = 8;

/** One batch of pages for one sub-host, with their contents as main's memory holds them. */
export interface HostBatch {
  /** The sub-host's index in the ownership table. */
  host: number;
  /** The pages, at most MAX_BATCH. */
  gfns: number[];
  /** Their contents, one page after another. */
  data: Uint8Array;
}

/** Runs `fn` over `jobs`, COPY_STREAMS at a time (bulk copies keep that many requests in flight). */
export async function inParallel<T>(jobs: T[], fn: (job: T) => Promise<void>): Promise<void> {
  let next = 0;
  const worker = async () => {
    while (next < jobs.length) await fn(jobs[next++]);
  };
  await Promise.all(Array.from({ length: COPY_STREAMS }, worker));
}

/** `xs` in slices of at most MAX_BATCH. */
export function batches<T>(xs: T[]): T[][] {
  const out: T[][] = [];
  for (let i = 0; i < xs.length; i += MAX_BATCH) out.push(xs.slice(i, i + MAX_BATCH));
  return out;
}

/** `gfns` grouped by the sub-host `hostOf` gives each. */
export function byHost(gfns: number[], hostOf: (g: number) => number): Map<number, number[]> {
  const groups = new Map<number, number[]>();
  for (const g of gfns) {
    const h = hostOf(g);
    const list = groups.get(h) ?? [];
    list.push(g);
    groups.set(h, list);
  }
  return groups;
}

/** `gfns` grouped by sub-host (`hostOf`) in batches, their contents not read yet. */
export function hostJobs(
  gfns: number[],
  hostOf: (g: number) => number,
): Array<Omit<HostBatch, "data">> {
  return [...byHost(gfns, hostOf)].flatMap(([host, list]) =>
    batches(list).map((part) => ({ host, gfns: part }))
  );
}

/** The contents of `gfns` in `mem`, one page after another. */
export function readPages(mem: GuestMemory, gfns: number[]): Uint8Array {
  const data = new Uint8Array(gfns.length * PAGE_SIZE);
  for (const [k, n] of indexRuns(gfns)) {
    data.set(mem.view(gfns[k] * PAGE_SIZE, n * PAGE_SIZE), k * PAGE_SIZE);
  }
  return data;
}

/** `gfns` grouped by sub-host (`hostOf`) in batches, with their contents read from `mem` now. */
export function hostBatches(
  mem: GuestMemory,
  gfns: number[],
  hostOf: (g: number) => number,
): HostBatch[] {
  return hostJobs(gfns, hostOf).map((j) => ({ ...j, data: readPages(mem, j.gfns) }));
}
