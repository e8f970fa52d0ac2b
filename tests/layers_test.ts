/**
 * The accelerator layering of src/ (../shared/DESIGN.md "Layout": ffi <- accel <- memory, vmm <- ckpt
 * <- net <- paging <- agent <- coord <- cli), checked on the source text:
 *
 * - KVM stays behind the accelerator interface: no file under src/ outside src/ffi/ and
 *   src/accel/kvm/ imports src/ffi/kvm.ts or src/ffi/kvm_abi.ts, or names `kvm_abi`, `ffi/kvm.ts`,
 *   a `KVM_*` constant or ioctl, or a `Kvm*` type in its code (comments may: they document);
 * - src/accel/ depends on nothing above it: its imports stay in src/accel/ and src/ffi/;
 * - src/rpc/, the dispatcher under both src/net/ and src/vmm/, imports nothing else from src/.
 *
 * Only these rules: the other layers have existing exceptions (net's use of ckpt's CBOR codec is
 * allowed by the order but not by its "a shared codec lives below both"; vmm/control imports
 * paging; memory imports vmm/persist.ts), which a full check would have to list first.
 */
import { assert, assertEquals } from "./helpers/assert.ts";

const ROOT = new URL("../", import.meta.url);

/** One TypeScript file of src/, its text and its code (comments blanked, lines kept). */
interface Source {
  /** Path from the repository root, `src/...`. */
  path: string;
  /** The file as written. */
  text: string;
  /** The text with every comment replaced by spaces (newlines kept, so lines still count). */
  code: string;
}

/** Every .ts file under `dir` (a path from the repository root), sorted. */
function sourcesUnder(dir: string): Source[] {
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

function readText(path: string): string {
  return Deno.readTextFileSync(new URL(path, ROOT));
}

function source(path: string, text: string): Source {
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
interface Dependency {
  line: number;
  specifier: string;
  /** Path from the repository root for relative specifiers; the specifier itself otherwise. */
  target: string;
}

const DEPENDENCY_PATTERNS = [
  /\b(?:import|export)\s+(?:type\s+)?[^"'`;]*?\bfrom\s*["']([^"']+)["']/g, // static
  /\bimport\s*["']([^"']+)["']/g, // side effect only
  /\bimport\s*\(\s*["']([^"']+)["']/g, // dynamic
  /\bnew\s+URL\(\s*["']([^"']+)["']\s*,\s*import\.meta\.url/g, // Worker and FFI library URLs
];

/** The modules `file` imports (statically, dynamically, or as a Worker URL). */
function dependencies(file: Source): Dependency[] {
  const out: Dependency[] = [];
  for (const pattern of DEPENDENCY_PATTERNS) {
    for (const m of file.code.matchAll(pattern)) {
      const specifier = m[1];
      const line = file.code.slice(0, m.index).split("\n").length;
      const target = specifier.startsWith(".")
        ? new URL(specifier, new URL(file.path, ROOT)).pathname.slice(ROOT.pathname.length)
        : specifier;
      out.push({ line, specifier, target });
    }
  }
  return out.sort((a, b) => a.line - b.line);
}

/** KVM's bindings: only src/ffi/ and src/accel/kvm/ may use them. */
const KVM_BINDINGS = ["src/ffi/kvm.ts", "src/ffi/kvm_abi.ts"];
/** Names in code that only KVM's own code has any business with. */
const KVM_NAMES = [/kvm_abi/g, /ffi\/kvm\.ts/g, /\bKVM_\w*/g, /\bKvm[A-Z]\w*/g];

/** Where `file` uses KVM outside the KVM accelerator, one line each (empty: nowhere). */
function kvmOutsideItsAccelerator(file: Source): string[] {
  if (file.path.startsWith("src/ffi/") || file.path.startsWith("src/accel/kvm/")) return [];
  const out: string[] = [];
  for (const d of dependencies(file)) {
    if (KVM_BINDINGS.includes(d.target)) out.push(`${file.path}:${d.line} imports ${d.target}`);
  }
  const lines = file.code.split("\n");
  lines.forEach((text, i) => {
    for (const name of KVM_NAMES) {
      for (const m of text.matchAll(name)) out.push(`${file.path}:${i + 1} names ${m[0]}`);
    }
  });
  return out;
}

/** Folders src/accel/ may import from. */
const ACCEL_MAY_IMPORT = ["src/accel/", "src/ffi/"];

/** Where a file of src/accel/ depends on a layer above it (or outside src/), one line each. */
function accelAboveItsLayer(file: Source): string[] {
  if (!file.path.startsWith("src/accel/")) return [];
  return dependencies(file)
    .filter((d) =>
      d.specifier.startsWith(".") && !ACCEL_MAY_IMPORT.some((p) => d.target.startsWith(p))
    )
    .map((d) => `${file.path}:${d.line} imports ${d.target}`);
}

Deno.test("KVM's bindings and names stay in src/ffi and src/accel/kvm", () => {
  const found = sourcesUnder("src").flatMap(kvmOutsideItsAccelerator);
  assertEquals(found, [], `KVM outside its accelerator:\n${found.join("\n")}`);
});

Deno.test("src/accel imports only src/accel and src/ffi", () => {
  const files = sourcesUnder("src/accel");
  assert(files.length > 10, `found ${files.length} files under src/accel`);
  const found = files.flatMap(accelAboveItsLayer);
  assertEquals(found, [], `src/accel depends on layers above it:\n${found.join("\n")}`);
});

Deno.test("src/rpc imports nothing else from src/", () => {
  const files = sourcesUnder("src/rpc");
  assert(files.length >= 3, `found ${files.length} files under src/rpc`);
  const found = files.flatMap((f) =>
    dependencies(f)
      .filter((d) => d.specifier.startsWith(".") && !d.target.startsWith("src/rpc/"))
      .map((d) => `${f.path}:${d.line} imports ${d.target}`)
  );
  assertEquals(found, [], `src/rpc depends on other layers:\n${found.join("\n")}`);
});

Deno.test("the layering checks find what they are meant to find, and only that", () => {
  const file = (path: string, text: string) => source(path, text);
  const vmm = file(
    "src/vmm/planted.ts",
    [
      'import type { KvmRegs } from "../ffi/kvm_abi.ts";', // 1: import and type
      "import {",
      "  Kvm,",
      '} from "../ffi/kvm.ts";', // 2-4: multi-line import (its line is the first)
      "// KVM_RUN and KvmVcpu in a comment, kvm_abi too", // 5: fine
      "/* a block comment naming KVM_SET_SREGS",
      "   and KvmSregs */", // 6-7: fine
      'const url = "https://example.org/a//b"; const n = "KVM_RUN";', // 8: the string names it
      'const w = new URL("../ffi/kvm.ts", import.meta.url);', // 9: URL of the binding
      "const r = /[/'\"]/g; const openKvmAccelerator = 1; const kvmThing = 2;", // 10: fine
      "const s = `${r}` + 'KvmFd';", // 11: names KvmFd
    ].join("\n"),
  );
  assertEquals(kvmOutsideItsAccelerator(vmm), [
    "src/vmm/planted.ts:1 imports src/ffi/kvm_abi.ts",
    "src/vmm/planted.ts:2 imports src/ffi/kvm.ts",
    "src/vmm/planted.ts:9 imports src/ffi/kvm.ts",
    "src/vmm/planted.ts:1 names kvm_abi",
    "src/vmm/planted.ts:1 names KvmRegs",
    "src/vmm/planted.ts:4 names ffi/kvm.ts",
    "src/vmm/planted.ts:8 names KVM_RUN",
    "src/vmm/planted.ts:9 names ffi/kvm.ts",
    "src/vmm/planted.ts:11 names KvmFd",
  ]);
  const sameText = (path: string) => kvmOutsideItsAccelerator(file(path, vmm.text));
  assertEquals(sameText("src/accel/kvm/planted.ts"), []);
  assertEquals(sameText("src/ffi/planted.ts"), []);
  assertEquals(sameText("src/accel/planted.ts").length, 9);

  const accel = file(
    "src/accel/emu/planted.ts",
    [
      'import { PAGE_SIZE } from "../../memory/guest_memory.ts";',
      'import type { Vm } from "../../vmm/vm.ts";',
      'export { encodeCbor } from "../../ckpt/cbor.ts";',
      'const m = await import("../../cli/run.ts");',
      'import "../../../main.ts";',
      'import * as libc from "../../ffi/libc.ts";', // fine
      'import type { CpuState } from "../cpu_state.ts";', // fine
      'const w = new URL("./vcpu_worker.ts", import.meta.url);', // fine
      'import { deserialize } from "node:v8";', // fine: not a layer
    ].join("\n"),
  );
  assertEquals(accelAboveItsLayer(accel), [
    "src/accel/emu/planted.ts:1 imports src/memory/guest_memory.ts",
    "src/accel/emu/planted.ts:2 imports src/vmm/vm.ts",
    "src/accel/emu/planted.ts:3 imports src/ckpt/cbor.ts",
    "src/accel/emu/planted.ts:4 imports src/cli/run.ts",
    "src/accel/emu/planted.ts:5 imports main.ts",
  ]);
  assertEquals(accelAboveItsLayer(file("src/vmm/planted.ts", accel.text)), []);
});

Deno.test("the dependency scan sees every import the files of src/ have", () => {
  // Each line that starts an import or re-export statement is found by the scan.
  for (const f of sourcesUnder("src")) {
    const seen = new Set(dependencies(f).map((d) => d.line));
    f.code.split("\n").forEach((text, i) => {
      if (
        /^(import|export)\b.*(\bfrom\b|^import\s*["'])/.test(text) || /^import\s*[{*\w]/.test(text)
      ) {
        assert(seen.has(i + 1), `${f.path}:${i + 1} not scanned: ${text}`);
      }
    });
  }
});
