/**
 * The layering of src/: the whole order, as docs/ARCHITECTURE.md states it and
 * scripts/check-layers.ts checks it (CI runs that script too), plus the rules the order alone does
 * not say, checked on the source text:
 *
 * - KVM stays behind the accelerator interface: no file under src/ outside src/ffi/ and
 *   src/accel/kvm/ imports src/ffi/kvm.ts or src/ffi/kvm_abi.ts, or names `kvm_abi`, `ffi/kvm.ts`,
 *   a `KVM_*` constant or ioctl, or a `Kvm*` type in its code (comments may: they document);
 * - src/accel/ depends on nothing above it: its imports stay in src/accel/ and src/ffi/;
 * - src/rpc/, the dispatcher under both src/net/ and src/vmm/, imports nothing else from src/.
 */
import { assert, assertEquals, assertThrows } from "./helpers/assert.ts";
import {
  ARCHITECTURE_DOC,
  LayerOrderError,
  layerViolations,
  parseLayerOrder,
} from "../scripts/check-layers.ts";
import {
  dependencies,
  readText,
  type Source,
  source,
  sourcesUnder,
} from "../scripts/layers/source_scan.ts";

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
      'export { encodeCbor } from "../../codec/cbor.ts";',
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
    "src/accel/emu/planted.ts:3 imports src/codec/cbor.ts",
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

Deno.test("every import of src/ points down the layer order of docs/ARCHITECTURE.md", () => {
  const order = parseLayerOrder(readText(ARCHITECTURE_DOC));
  const folders = [...Deno.readDirSync(new URL("../src/", import.meta.url))].map((e) => e.name);
  assert(folders.length >= 10, `found ${folders.length} entries under src/`);
  const found = layerViolations(sourcesUnder("src"), order);
  assertEquals(found, [], `imports against the layer order:\n${found.join("\n")}`);
});

Deno.test("the layer check finds upward, sideways, outside and unplaced imports, and only those", () => {
  const order = parseLayerOrder("text\n```layers\nffi ← codec, rpc <- vmm\n  ← cli\n```\n");
  assertEquals(order, [["ffi"], ["codec", "rpc"], ["vmm"], ["cli"]]);
  const files: Source[] = [
    source(
      "src/vmm/planted.ts",
      [
        'import { a } from "../ffi/libc.ts";', // 1: down, fine
        'import type { B } from "./vm.ts";', // 2: own layer, fine
        'export { c } from "../cli/run.ts";', // 3: up
        'const d = await import("../../main.ts");', // 4: outside src/
        'const w = new URL("../../main.ts", import.meta.url);', // 5: a program to spawn, fine
        'import "../agent/agent.ts";', // 6: not in the order
        'import { e } from "node:path";', // 7: not a layer, fine
        '// import { f } from "../cli/run.ts";', // 8: a comment, fine
      ].join("\n"),
    ),
    source("src/codec/planted.ts", 'import { g } from "../rpc/errors.ts";'), // same level
    source("src/extra/planted.ts", 'import { h } from "../ffi/libc.ts";'), // unplaced layer
  ];
  assertEquals(layerViolations(files, order), [
    "src/vmm/planted.ts:3 imports src/cli/run.ts: cli is above vmm",
    "src/vmm/planted.ts:4 imports main.ts: outside src/, which nothing in src/ may import",
    "src/vmm/planted.ts:6 imports src/agent/agent.ts: agent is not in the layer order",
    "src/codec/planted.ts:1 imports src/rpc/errors.ts: codec and rpc share a level",
    `src/extra: not in the layer order; place it in ${ARCHITECTURE_DOC}'s layers block`,
  ]);
});

Deno.test("a missing or malformed layers block is refused in one line naming the document", () => {
  for (
    const [text, says] of [
      ["no block here", "no ```layers block"],
      ["```layers\nffi ← ffi\n```", '"ffi" is listed twice'],
      ["```layers\nffi ← ../up\n```", "not a folder or file name"],
      ["```layers\nffi\n```", "fewer than two levels"],
    ]
  ) {
    const e = assertThrows(() => parseLayerOrder(text), LayerOrderError);
    assert(e.message.startsWith(`${ARCHITECTURE_DOC}: `), e.message);
    assert(e.message.includes(says), `${e.message} does not say ${says}`);
  }
});
