/**
 * Checks that every import in src/ points down the layer order that docs/ARCHITECTURE.md states in
 * its `layers` block: a file of src/A/ may import src/A/ itself and any layer listed before A, never
 * one after it or beside it, and no module outside src/. Prints each offending import on one line and
 * exits 1; CI runs it (scripts/test).
 *
 *     deno run --allow-read scripts/check-layers.ts
 */
import { dependencies, readText, type Source, sourcesUnder } from "./layers/source_scan.ts";

/** Where the order is written, from the repository root. */
export const ARCHITECTURE_DOC = "docs/ARCHITECTURE.md";

/** The layers from the bottom up; the names in one entry share a level and may not import each other. */
export type LayerOrder = string[][];

/** The document has no usable `layers` block. */
export class LayerOrderError extends Error {
  /** `message` says what is wrong with the block. */
  constructor(message: string) {
    super(`${ARCHITECTURE_DOC}: ${message}`);
    this.name = "LayerOrderError";
  }
}

/**
 * The order in the first fenced block tagged `layers` of `markdown`: names (a folder of src/, or a
 * file directly in it) from the bottom up separated by `←` (or `<-`), names of one level by commas.
 */
export function parseLayerOrder(markdown: string): LayerOrder {
  const m = /^```layers\n([\s\S]*?)^```/m.exec(markdown);
  if (!m) throw new LayerOrderError("no ```layers block; add one stating the order of src/");
  const levels = m[1].replace(/\s+/g, " ").trim().split(/\s*(?:←|<-)\s*/).map((level) =>
    level.split(",").map((name) => name.trim())
  );
  const seen = new Set<string>();
  for (const name of levels.flat()) {
    if (!/^[a-z][a-z0-9_]*(\.ts)?$/.test(name)) {
      throw new LayerOrderError(`"${name}" in the layers block is not a folder or file name`);
    }
    if (seen.has(name)) throw new LayerOrderError(`"${name}" is listed twice in the layers block`);
    seen.add(name);
  }
  if (levels.length < 2) throw new LayerOrderError("the layers block names fewer than two levels");
  return levels;
}

/** The layer of a path under src/: its first segment (`src/vmm/boot/elf.ts` → `vmm`). */
export function layerOf(path: string): string | undefined {
  return /^src\/([^/]+)/.exec(path)?.[1];
}

/** Every import of `files` that does not point down `order`, one line each (empty: none). */
export function layerViolations(files: Source[], order: LayerOrder): string[] {
  const level = new Map<string, number>();
  order.forEach((names, i) => names.forEach((n) => level.set(n, i)));
  const out: string[] = [];
  const unplaced = new Set<string>();
  for (const f of files) {
    const from = layerOf(f.path);
    if (from === undefined) continue;
    const mine = level.get(from);
    if (mine === undefined) {
      unplaced.add(from);
      continue;
    }
    for (const d of dependencies(f)) {
      if (!d.specifier.startsWith(".")) continue;
      const to = layerOf(d.target);
      const where = `${f.path}:${d.line} imports ${d.target}`;
      // A URL outside src/ names a program to spawn or a file to read (main.ts, a guest image):
      // a process boundary, not a module this layer links against.
      if (to === undefined && d.kind === "url") continue;
      // Data outside src/ (deno.json, for the version) is read, not linked against.
      if (to === undefined && !/\.[cm]?[jt]sx?$/.test(d.target)) continue;
      if (to === undefined) out.push(`${where}: outside src/, which nothing in src/ may import`);
      else if (to === from) continue;
      else if (!level.has(to)) out.push(`${where}: ${to} is not in the layer order`);
      else if (level.get(to)! === mine) out.push(`${where}: ${from} and ${to} share a level`);
      else if (level.get(to)! > mine) out.push(`${where}: ${to} is above ${from}`);
    }
  }
  for (const name of [...unplaced].sort()) {
    out.push(`src/${name}: not in the layer order; place it in ${ARCHITECTURE_DOC}'s layers block`);
  }
  return out;
}

if (import.meta.main) {
  try {
    const order = parseLayerOrder(readText(ARCHITECTURE_DOC));
    const found = layerViolations(sourcesUnder("src"), order);
    for (const line of found) console.error(line);
    if (found.length > 0) {
      console.error(`${found.length} import(s) against the layer order of ${ARCHITECTURE_DOC}`);
      Deno.exit(1);
    }
    console.error(
      `layers: every import of src/ points down (${order.map((l) => l.join(", ")).join(" ← ")})`,
    );
  } catch (e) {
    if (!(e instanceof LayerOrderError)) throw e;
    console.error(e.message);
    Deno.exit(1);
  }
}
