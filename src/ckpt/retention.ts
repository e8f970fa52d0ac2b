/**
 * Retention: which generations of a store are kept (`--keep N`), and removing the rest. A
 * generation is one consistency point; a merged generation stands for the point of the chain it
 * squashed, so that point is kept through the merged one only. Keeping a point keeps every
 * generation its fragments are in. `--keep N` keeps the newest points whose generations, together,
 * number at most N (the newest point always, whatever its chain's length), so the store never holds
 * more than N generation directories and each of them restores.
 */
import { type Manifest, readManifest } from "./manifest.ts";
import { bytesUnder, CheckpointStore, removeUnheld } from "./store.ts";

/** What retention needs of one committed generation. */
export interface GenerationView {
  /** Its number. */
  generation: number;
  /** The consistency point it restores to: its id, or for a merged one the id it stands for. */
  point: string;
  /** The generations its fragments are in (its own among them). */
  refs: number[];
}

/** A retention rule or store could not be applied; nothing was removed. */
export class RetentionError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "RetentionError";
  }
}

/** Most generations `--keep` may name. */
export const MAX_KEEP = 100_000;

/** `keep` checked: undefined (keep every point) or a whole number from 1 to MAX_KEEP. */
export function keepArg(keep: unknown, what = "--keep"): number | undefined {
  if (keep === undefined || keep === null) return undefined;
  if (!Number.isSafeInteger(keep) || (keep as number) < 1 || (keep as number) > MAX_KEEP) {
    throw new RetentionError(
      `${what} ${JSON.stringify(keep)}: give a whole number of generations from 1 to ${MAX_KEEP}`,
    );
  }
  return keep as number;
}

/** The retention view of manifest `m`. */
export function viewOf(m: Manifest): GenerationView {
  return {
    generation: m.generation,
    point: m.mergedFromId ?? m.id,
    refs: [...new Set(m.fragments.map((f) => f.generation))],
  };
}

/**
 * The generations kept of `views` (every committed generation of a store) under `keep`: each
 * point's newest generation, newest point first, with every generation it references, while they
 * number at most `keep` (undefined: every point).
 */
export function keptGenerations(views: GenerationView[], keep?: number): Set<number> {
  const kept = new Set<number>(), seen = new Set<string>();
  for (const v of [...views].sort((a, b) => b.generation - a.generation)) {
    if (seen.has(v.point)) continue;
    seen.add(v.point);
    const more = [...new Set([v.generation, ...v.refs])].filter((g) => !kept.has(g));
    if (keep !== undefined && kept.size > 0 && kept.size + more.length > keep) break;
    for (const g of more) kept.add(g);
  }
  return kept;
}

/** Every committed generation's view in store `root`; refused when a manifest cannot be read. */
export function storeViews(root: string): GenerationView[] {
  return new CheckpointStore(root).generations().filter((g) => g.committed).map((g) => {
    try {
      return viewOf(readManifest(g.dir));
    } catch (e) {
      // What it references is unknown, so nothing can be shown unreferenced.
      throw new RetentionError(
        `${g.dir}: ${(e as Error).message}; nothing was removed (repair or remove that generation)`,
      );
    }
  });
}

/** A generation directory retention removed. */
export interface Pruned {
  /** Its number. */
  generation: number;
  /** Bytes its files held. */
  bytes: number;
  /** False for an interrupted one. */
  committed: boolean;
}

/**
 * Removes from store `root` the generations up to `upTo` (the newest the deciding host had
 * committed) that are not in `kept`, nor referenced by the manifest here of a kept or newer
 * generation. Newer ones, and any a writer holds, are left alone: they may be a checkpoint or merge
 * under way.
 */
export function pruneStore(root: string, kept: Iterable<number>, upTo: number): Pruned[] {
  const keep = new Set(kept);
  // What a generation newer than the decision references stays too: the decider may not have
  // known that generation (a commit it missed), and it is kept.
  for (const v of storeViews(root)) {
    if (keep.has(v.generation) || v.generation > upTo) { for (const g of v.refs) keep.add(g); }
  }
  const out: Pruned[] = [];
  for (const g of new CheckpointStore(root).generations()) {
    if (g.generation > upTo || keep.has(g.generation)) continue;
    const bytes = bytesUnder(g.dir);
    if (removeUnheld(g.dir)) out.push({ generation: g.generation, bytes, committed: g.committed });
  }
  return out;
}

/** What retention kept, and removed on each host (by name). */
export interface RetentionReport {
  /** The generations kept. */
  kept: number[];
  /** The generation directories removed, by host. */
  removed: Record<string, Pruned[]>;
  /** Hosts that could not be told, each with why (they remove the rest at the next retention). */
  failed: Record<string, string>;
}

/** What retention decided in one store, and removed there. */
export interface Retained {
  /** The generations kept. */
  kept: number[];
  /** The newest committed generation when it decided: nothing newer is touched anywhere. */
  upTo: number;
  /** What it removed here. */
  removed: Pruned[];
}

/** Decides what store `root` keeps under `keep` (undefined: every point) and removes the rest. */
export function retainStore(root: string, keep?: number): Retained {
  const views = storeViews(root);
  const upTo = Math.max(0, ...views.map((v) => v.generation));
  const kept = [...keptGenerations(views, keep)].sort((a, b) => a - b);
  return { kept, upTo, removed: pruneStore(root, kept, upTo) };
}
