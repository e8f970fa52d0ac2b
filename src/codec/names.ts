/**
 * The one grammar of each name that becomes part of a path or crosses a wire: VM names, checkpoint
 * ids, store names, host labels, zone labels, generation directories and a manifest's fragment paths. Every
 * grammar starts with a letter or digit and has no '/', so no name can be `..` or climb out of the
 * directory it is joined to. Imports nothing else from src/, so every layer may check names with it.
 */

/** The kinds of name, each with one grammar. */
export type NameKind =
  | "vm"
  | "checkpoint-id"
  | "store"
  | "host"
  | "zone"
  | "generation"
  | "fragment-path";

const GRAMMARS: Record<NameKind, { re: RegExp; text: string }> = {
  vm: {
    re: /^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$/,
    text: "a letter or digit, then [A-Za-z0-9_.-], 1-63 in all",
  },
  "checkpoint-id": { re: /^[0-9a-f]{8,32}$/, text: "8 to 32 lowercase hex digits" },
  store: {
    re: /^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$/,
    text: "a letter or digit, then [A-Za-z0-9_.-], 1-63 in all",
  },
  host: {
    re: /^[A-Za-z0-9][A-Za-z0-9_.:-]{0,252}$/,
    text: "a letter or digit, then [A-Za-z0-9_.:-], 1-253 in all",
  },
  zone: {
    re: /^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$/,
    text: "a letter or digit, then [A-Za-z0-9_.-], 1-63 in all",
  },
  // Six digits, more once a store passes generation 999999 (a checkpoint every 20 s does in 231
  // days); nine at most, as the newest generation a host may report (ckpt/store.ts).
  generation: { re: /^g[0-9]{6,9}$/, text: "g and six to nine digits" },
  "fragment-path": {
    re: /^g[0-9]{6,9}\/[A-Za-z0-9][A-Za-z0-9_.:-]{0,252}\.frag$/,
    text: "gNNNNNN/HOST.frag, relative to the store",
  },
};

/** A name that does not follow its grammar; the message names the field, the value and the grammar. */
export class NameError extends Error {
  constructor(
    /** The argument or field that carried it. */
    readonly field: string,
    /** The value as given. */
    readonly value: unknown,
    /** Its kind. */
    readonly kind: NameKind,
  ) {
    super(`${field} ${shown(value)} is not ${grammarOf(kind)}`);
    this.name = "NameError";
  }
}

/** What a `kind` name is, for a message: "a store (a letter or digit, then ...)". */
export function grammarOf(kind: NameKind): string {
  return `a ${kind.replace("-", " ")} (${GRAMMARS[kind].text})`;
}

/** `v` quoted for a one-line message: escaped, and cut after 80 characters. */
export function shown(v: unknown): string {
  if (typeof v !== "string") return v === undefined ? "(missing)" : `(a ${typeof v})`;
  const s = JSON.stringify(v.length > 80 ? v.slice(0, 80) : v);
  return v.length > 80 ? `${s}... (${v.length} characters)` : s;
}

/** True when `v` is a string of `kind`'s grammar. */
export function isName(kind: NameKind, v: unknown): v is string {
  return typeof v === "string" && GRAMMARS[kind].re.test(v);
}

/** `v` if it is a `kind` name, else a {@link NameError} naming `field`. */
export function checkName(kind: NameKind, field: string, v: unknown): string {
  if (!isName(kind, v)) throw new NameError(field, v, kind);
  return v;
}
