/**
 * Reads the TypeScript sources of the repository as text for the layering checks: each file's code
 * with comments blanked (strings, template literals and regular expressions kept whole) and the
 * modules it depends on, statically, dynamically or as a Worker/FFI URL.
 */

/** The repository root. */
export const ROOT = new URL("../../", import.meta.url);

/** One TypeScript file of src/, its text and its code (comments blanked, lines kept). */
export interface Source {
  /** Path from the repository root, `src/...`. */
  path: string;
  /** The file as written. */
  text: string;
  /** The text with every comment replaced by spaces (newlines kept, so lines still count). */
  code: string;
}

/** Every .ts file under `dir` (a path from the repository root), sorted. */
export function sourcesUnder(dir: string): Source[] {
  const out: Source[] = [];
  const walk = (rel: string) => {
    for (const e of Deno.readDirSync(new URL(rel, ROOT))) {
      const p = `${rel}/${e.name}`;
      if (e.isDirectory) walk(p);
      else if (e.isFile && p.endsWith(".ts")) out.push(source(p, readText(p)));
    }
  };
  walk(dir);
  return out.sort((a, b) => a.path.localeCompare(b.path));
}

/** A file of the repository, by its path from the root. */
export function readText(path: string): string {
  return Deno.readTextFileSync(new URL(path, ROOT));
}

/** A Source of `text` as if it were the file at `path`. */
export function source(path: string, text: string): Source {
  return { path, text, code: withoutComments(text) };
}

/** Characters after which a `/` starts a regular expression literal rather than a division. */
const BEFORE_REGEX = new Set([..."(,=:[!&|?{};+-*%<>~^"]);

/**
 * `text` with `//` and `/* *\/` comments blanked; strings, template literals and regular
 * expression literals are skipped whole, so a `//` inside them is not taken for a comment.
 */
function withoutComments(text: string): string {
  let out = "";
  let i = 0;
  let last = ""; // the last character of code that is not white space
  const blank = (s: string) => s.replace(/[^\n]/g, " ");
  while (i < text.length) {
    const c = text[i], n = text[i + 1];
    let end: number;
    if (c === "/" && n === "/") {
      end = text.indexOf("\n", i);
      if (end < 0) end = text.length;
      out += blank(text.slice(i, end));
      i = end;
      continue;
    }
    if (c === "/" && n === "*") {
      end = text.indexOf("*/", i + 2);
      end = end < 0 ? text.length : end + 2;
      out += blank(text.slice(i, end));
      i = end;
      continue;
    }
    if (
      c === '"' || c === "'" || c === "`" || (c === "/" && (last === "" || BEFORE_REGEX.has(last)))
    ) {
      let j = i + 1;
      let inClass = false;
      while (j < text.length && (text[j] !== c || inClass)) {
        if (text[j] === "\\") j++;
        else if (c === "/" && text[j] === "[") inClass = true;
        else if (c === "/" && text[j] === "]") inClass = false;
        else if (c === "/" && text[j] === "\n") break; // not a regex after all
        j++;
      }
      out += text.slice(i, j + 1);
      last = c;
      i = j + 1;
      continue;
    }
    out += c;
    if (!/\s/.test(c)) last = c;
    i++;
  }
  return out;
}

/** One module a file depends on: its specifier, what it resolves to and the line that names it. */
export interface Dependency {
  /** Line of the file (from 1) the specifier is on. */
  line: number;
  /** As written. */
  specifier: string;
  /** `import` for a static, side-effect or dynamic import; `url` for `new URL(..., import.meta.url)`. */
  kind: "import" | "url";
  /** Path from the repository root for relative specifiers; the specifier itself otherwise. */
  target: string;
}

const DEPENDENCY_PATTERNS: [RegExp, Dependency["kind"]][] = [
  [/\b(?:import|export)\s+(?:type\s+)?[^"'`;]*?\bfrom\s*["']([^"']+)["']/g, "import"], // static
  [/\bimport\s*["']([^"']+)["']/g, "import"], // side effect only
  [/\bimport\s*\(\s*["']([^"']+)["']/g, "import"], // dynamic
  [/\bnew\s+URL\(\s*["']([^"']+)["']\s*,\s*import\.meta\.url/g, "url"], // Workers, FFI libraries
];

/** The modules `file` imports (statically, dynamically, or as a Worker URL). */
export function dependencies(file: Source): Dependency[] {
  const out: Dependency[] = [];
  for (const [pattern, kind] of DEPENDENCY_PATTERNS) {
    for (const m of file.code.matchAll(pattern)) {
      const specifier = m[1];
      const line = file.code.slice(0, m.index).split("\n").length;
      const target = specifier.startsWith(".")
        ? new URL(specifier, new URL(file.path, ROOT)).pathname.slice(ROOT.pathname.length)
        : specifier;
      out.push({ line, specifier, kind, target });
    }
  }
  return out.sort((a, b) => a.line - b.line);
}
