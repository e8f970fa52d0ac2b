/**
 * The manifest file (docs/FORMAT.md): it is laid out as documented and round-trips every manifest;
 * the page map helpers keep their invariants. The CBOR codec under it: ckpt_manifest_cbor_test.ts.
 */
import fc from "fast-check";
import { assert, assertEquals } from "./helpers/assert.ts";
import { encodeCbor } from "../src/codec/cbor.ts";
import { crc32, MANIFEST_VERSION } from "../src/ckpt/format.ts";
import {
  decodeManifest,
  encodeManifest,
  type Manifest,
  MAX_ADDRS,
  MAX_SUBS,
} from "../src/ckpt/manifest.ts";
import {
  buildPageMap,
  compressPageMap,
  coversAll,
  expandPageMap,
  overlayPageMap,
} from "../src/ckpt/page_map.ts";
import type { MachineState } from "../src/vmm/machine.ts";
import { PAGE_SIZE as PAGE } from "../src/accel/accel.ts";
import { machineState } from "./helpers/cbor_arbitraries.ts";

const RUNS = 300;

// ---------------------------------------------------------------------------------------------
// The manifest file.

/** A manifest around `machine`, its page map built from one fragment index per page. */
function manifestOf(machine: MachineState, perPage: Uint32Array, fragments: number): Manifest {
  return {
    dcresVersion: "0.1.0",
    id: "00112233445566778899aabbccddeeff",
    vm: machine.spec.name,
    generation: fragments,
    parent: fragments > 1 ? fragments - 1 : null,
    createdAt: new Date(0).toISOString(),
    mode: "precopy",
    compressed: true,
    machine,
    fragments: Array.from({ length: fragments }, (_, i) => ({
      path: `g${String(i + 1).padStart(6, "0")}/main.frag`,
      host: "main",
      generation: i + 1,
      footerCrc: (0x9e3779b9 * (i + 1)) >>> 0,
      pages: perPage.length,
      bytes: 4160 + i,
    })),
    pageMap: compressPageMap(perPage),
    prefetchOrder: Uint32Array.from(perPage.keys()).reverse(),
    stats: {
      pagesSaved: 1,
      zeroPages: 2,
      pagesReused: 3,
      pagesSavedTwice: 4,
      bytesWritten: 5 * PAGE,
      rounds: 6,
      downtimeMs: 0.25,
      totalMs: 12.5,
    },
  };
}

const manifestArb = fc.integer({ min: 1, max: 4 }).chain((fragments) =>
  fc.tuple(
    machineState,
    fc.array(fc.nat(fragments - 1), { minLength: 1, maxLength: 64 }).map((a) =>
      Uint32Array.from(a)
    ),
  ).map(([m, per]) => manifestOf(m, per, fragments))
);

Deno.test("a manifest round-trips through its file bytes, and the file is laid out as documented", () => {
  fc.assert(
    fc.property(manifestArb, (m) => {
      const bytes = encodeManifest(m);
      const dv = new DataView(bytes.buffer);
      const body = encodeCbor(m);
      const L = body.length;
      assertEquals(bytes.length, 36 + L);
      assertEquals(new TextDecoder().decode(bytes.subarray(0, 8)), "DCRMANIF");
      assertEquals(
        [dv.getUint16(8, true), dv.getUint16(10, true), dv.getUint16(12, true)],
        [MANIFEST_VERSION.major, MANIFEST_VERSION.minor, MANIFEST_VERSION.patch],
      );
      assertEquals(dv.getUint16(14, true), 0);
      assertEquals(dv.getBigUint64(16, true), BigInt(L));
      assertEquals(bytes.subarray(24, 24 + L), body);
      assertEquals(dv.getUint32(24 + L, true), crc32(bytes.subarray(0, 24 + L)));
      assertEquals(new TextDecoder().decode(bytes.subarray(28 + L)), "DCRMEND\0");
      assertEquals(decodeManifest("MANIFEST", bytes), m);
    }),
    { numRuns: 100 },
  );
});

Deno.test("a manifest records the address of every host of the largest split, main and each sub-host, and no more", () => {
  const [machine] = fc.sample(machineState, 1);
  const m = manifestOf(machine, Uint32Array.of(0), 1);
  const addrs = (n: number) =>
    Object.fromEntries(Array.from({ length: n }, (_, i) => [`node${i}`, `10.0.0.${i}:7400`]));
  const largest = { ...m, addrs: addrs(MAX_SUBS + 1) };
  assertEquals(MAX_ADDRS, MAX_SUBS + 1);
  assertEquals(decodeManifest("MANIFEST", encodeManifest(largest)), largest);
  let err = "";
  try {
    decodeManifest("MANIFEST", encodeManifest({ ...m, addrs: addrs(MAX_ADDRS + 1) }));
  } catch (e) {
    err = (e as Error).message;
  }
  assert(err.includes(`more than ${MAX_ADDRS}`), err);
});

// ---------------------------------------------------------------------------------------------
// The page map.

/** One fragment index per page, with runs (few distinct values). */
const perPageArb = fc.array(fc.nat(3), { maxLength: 300 }).map((a) => Uint32Array.from(a));
const nonEmptyPerPage = fc.array(fc.nat(3), { minLength: 1, maxLength: 300 }).map((a) =>
  Uint32Array.from(a)
);

/** The map's runs, as [first, count, fragment] triples. */
function runsOf(map: Uint32Array): number[][] {
  const out: number[][] = [];
  for (let i = 0; i < map.length; i += 3) out.push([map[i], map[i + 1], map[i + 2]]);
  return out;
}

/** True when `map` tiles 0..pages in ascending runs, each longer than 0, neighbours different. */
function isCanonical(map: Uint32Array, pages: number): boolean {
  let next = 0;
  let prev = -1;
  for (const [first, count, frag] of runsOf(map)) {
    if (first !== next || count === 0 || frag === prev) return false;
    next += count;
    prev = frag;
  }
  return map.length % 3 === 0 && next === pages;
}

Deno.test("page map: compressing then expanding gives back every page's fragment", () => {
  fc.assert(
    fc.property(perPageArb, (per) => {
      assertEquals(expandPageMap(compressPageMap(per), per.length), per);
    }),
    { numRuns: RUNS },
  );
});

Deno.test("page map: compress makes maximal ascending runs that cover every page exactly once", () => {
  fc.assert(
    fc.property(perPageArb, (per) => {
      const map = compressPageMap(per);
      assert(isCanonical(map, per.length), `not canonical: ${runsOf(map)}`);
      assert(coversAll(map, per.length));
    }),
    { numRuns: RUNS },
  );
});

Deno.test("page map: expanding then compressing a canonical map gives the same map", () => {
  fc.assert(
    fc.property(nonEmptyPerPage, (per) => {
      const map = compressPageMap(per);
      assertEquals(compressPageMap(expandPageMap(map, per.length)), map);
    }),
    { numRuns: RUNS },
  );
});

Deno.test("page map: overlay moves exactly the given pages to the new fragment and keeps the rest", () => {
  fc.assert(
    fc.property(
      nonEmptyPerPage.chain((per) =>
        fc.tuple(
          fc.constant(per),
          fc.array(fc.nat(per.length - 1), { maxLength: 40 }),
          fc.nat(5),
        )
      ),
      ([per, gfns, frag]) => {
        const out = overlayPageMap(compressPageMap(per), gfns, frag);
        const moved = new Set(gfns);
        const expanded = expandPageMap(out, per.length);
        for (let g = 0; g < per.length; g++) {
          assertEquals(expanded[g], moved.has(g) ? frag : per[g], `gfn ${g}`);
        }
        assert(isCanonical(out, per.length), `not canonical: ${runsOf(out)}`);
        assert(coversAll(out, per.length));
      },
    ),
    { numRuns: RUNS },
  );
});

Deno.test("page map: a full checkpoint's map puts every page in its one fragment", () => {
  fc.assert(
    fc.property(fc.integer({ min: 1, max: 5000 }), fc.nat(9), (pages, frag) => {
      const map = buildPageMap(pages, frag);
      assert(coversAll(map, pages));
      assert(expandPageMap(map, pages).every((f) => f === frag));
    }),
    { numRuns: 100 },
  );
});

Deno.test("page map: coversAll refuses gaps, overlaps, empty runs, ragged maps and the wrong size", () => {
  type Breakage = (runs: number[][], pages: number) => [number[], number];
  const flat = (runs: number[][]) => runs.flat();
  const breakages: Record<string, Breakage> = {
    "last run dropped": (r, n) => [flat(r.slice(0, -1)), n],
    "first run starts late": (r, n) => [flat([[r[0][0] + 1, r[0][1], r[0][2]], ...r.slice(1)]), n],
    "a run one page too long": (r, n) => {
      const i = r.length - 1;
      return [flat([...r.slice(0, i), [r[i][0], r[i][1] + 1, r[i][2]]]), n];
    },
    "a run duplicated": (r, n) => [flat([...r, r[r.length - 1]]), n],
    "an empty run added": (r, n) => [flat([...r, [n, 0, 0]]), n],
    "a ragged map (not whole runs)": (r, n) => [[...flat(r), n], n],
    "one page more in RAM": (r, n) => [flat(r), n + 1],
    "one page less in RAM": (r, n) => [flat(r), n - 1],
  };
  fc.assert(
    fc.property(nonEmptyPerPage, fc.constantFrom(...Object.keys(breakages)), (per, how) => {
      const runs = runsOf(compressPageMap(per));
      assert(coversAll(Uint32Array.from(flat(runs)), per.length));
      const [broken, pages] = breakages[how](runs, per.length);
      assert(!coversAll(Uint32Array.from(broken), pages), `${how}: ${broken} accepted`);
    }),
    { numRuns: RUNS },
  );
});
