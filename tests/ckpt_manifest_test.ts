/**
 * The manifest's encodings (docs/FORMAT.md): the CBOR subset round-trips everything a MachineState
 * holds and refuses malformed input with CborError only, quickly; the manifest file layout is the
 * documented one; the page map helpers keep their invariants.
 */
import fc from "fast-check";
import { assert, assertEquals, assertThrows } from "./helpers/assert.ts";
import { CborError, decodeCbor, encodeCbor } from "../src/codec/cbor.ts";
import { crc32, MANIFEST_VERSION } from "../src/ckpt/format.ts";
import { decodeManifest, encodeManifest, type Manifest } from "../src/ckpt/manifest.ts";
import {
  buildPageMap,
  compressPageMap,
  coversAll,
  expandPageMap,
  overlayPageMap,
} from "../src/ckpt/page_map.ts";
import * as abi from "../src/ffi/kvm_abi.ts";
import type { MachineState } from "../src/vmm/machine.ts";
import type { CpuState } from "../src/accel/cpu_state.ts";
import { PAGE_SIZE as PAGE } from "../src/accel/accel.ts";

const RUNS = 300;

// ---------------------------------------------------------------------------------------------
// Arbitraries: CBOR-encodable values and machine states.

/** Integers at every CBOR head size boundary and at the edge of safe integers. */
const BOUNDARY_NUMBERS = [
  0,
  1,
  23,
  24,
  255,
  256,
  65535,
  65536,
  2 ** 32 - 1,
  2 ** 32,
  Number.MAX_SAFE_INTEGER,
  -1,
  -24,
  -25,
  -256,
  -257,
  -(2 ** 32),
  -(2 ** 32) - 1,
  Number.MIN_SAFE_INTEGER,
  2 ** 53,
  -(2 ** 53),
  2 ** 64,
  0.5,
  Number.MAX_VALUE,
  Number.MIN_VALUE,
  Infinity,
  -Infinity,
  NaN,
];

/** Bigints at 64-bit and byte boundaries, both signs. */
const BOUNDARY_BIGINTS = [
  0n,
  1n,
  -1n,
  255n,
  256n,
  -256n,
  -257n,
  2n ** 53n,
  2n ** 63n - 1n,
  2n ** 63n,
  2n ** 64n - 1n,
  2n ** 64n,
  -(2n ** 63n),
  -(2n ** 63n) - 1n,
  -(2n ** 64n),
  -(2n ** 64n) - 1n,
  // The largest magnitudes MAX_BIGNUM_BYTES (64) allows, either sign.
  2n ** 512n - 1n,
  -(2n ** 512n),
];

/** Map keys: any well-formed string except `__proto__` (refused on decode, see the report). */
const key = fc.string({ unit: "grapheme", maxLength: 8 }).filter((k) => k !== "__proto__");

const leaf: fc.Arbitrary<unknown> = fc.oneof(
  fc.constant(null),
  fc.boolean(),
  fc.integer(),
  fc.maxSafeInteger(),
  fc.constantFrom(...BOUNDARY_NUMBERS),
  // -0 is written as the integer 0 (see "-0 survives a round trip" below).
  fc.double().filter((d) => !Object.is(d, -0)),
  fc.bigInt({ min: -(2n ** 200n), max: 2n ** 200n }),
  fc.constantFrom(...BOUNDARY_BIGINTS),
  fc.string({ unit: "grapheme", maxLength: 20 }),
  fc.uint8Array({ maxLength: 40 }),
  fc.uint16Array({ maxLength: 10 }),
  fc.uint32Array({ maxLength: 10 }),
  fc.bigUint64Array({ maxLength: 6 }),
  // Float64Array compares element-wise in assertEquals, where NaN !== NaN; its bytes are checked
  // separately below.
  fc.float64Array({ maxLength: 6, noNaN: true }),
);

/** Any value the codec supports: leaves inside arrays and string-keyed maps, a few levels deep. */
const cborValue: fc.Arbitrary<unknown> = fc.letrec((tie) => ({
  value: fc.oneof({ depthSize: "small", withCrossShrink: true }, leaf, tie("array"), tie("map")),
  array: fc.array(tie("value"), { maxLength: 5 }),
  map: fc.dictionary(key, tie("value"), { maxKeys: 5, noNullPrototype: true }),
})).value;

/** A decoded struct of codec `c`: its fields as a real KVM get-ioctl would give them. */
function struct<T>(c: { size: number; decode(b: Uint8Array): T }): fc.Arbitrary<T> {
  return fc.uint8Array({ minLength: c.size, maxLength: c.size }).map((b) => c.decode(b));
}

const u64 = fc.bigInt({ min: 0n, max: 2n ** 64n - 1n });

/** Records are plain objects, as decoded maps are (fast-check also makes null-prototype ones). */
const PLAIN = { noNullPrototype: true } as const;

const vcpuState: fc.Arbitrary<CpuState> = fc.record({
  index: fc.nat(31),
  regs: struct(abi.kvmRegs),
  sregs: struct(abi.kvmSregs),
  xsave: fc.uint8Array({ minLength: 0, maxLength: 4096 }),
  xcrs: struct(abi.kvmXcrs),
  msrs: fc.array(fc.record({ index: fc.nat({ max: 0xffffffff }), data: u64 }, PLAIN), {
    maxLength: 40,
  }),
  lapic: fc.uint8Array({ minLength: 1024, maxLength: 1024 }),
  events: struct(abi.kvmVcpuEvents),
  mpState: fc.nat(8),
  debugregs: struct(abi.kvmDebugregs),
  cpuid: fc.array(struct(abi.kvmCpuidEntry2), { maxLength: 8 }),
}, PLAIN);

const chip = fc.uint8Array({ minLength: 512, maxLength: 512 });

/** A MachineState: every KVM structure, device states, and a spec with optional parts. */
const machineState: fc.Arbitrary<MachineState> = fc.record({
  name: fc.stringMatching(/^[A-Za-z0-9][A-Za-z0-9_.-]{0,15}$/),
  guest: fc.constantFrom("memstamp" as const, "linux" as const),
  memSize: fc.nat({ max: 2 ** 40 }).map((n) => n * PAGE),
  vcpus: fc.array(vcpuState, { minLength: 1, maxLength: 3 }),
  memstamp: fc.option(
    fc.record({
      pattern: fc.constantFrom("seq" as const, "random" as const, "hotcold" as const),
      delay: fc.nat(),
    }, { requiredKeys: [], ...PLAIN }),
    { nil: undefined },
  ),
  linux: fc.option(
    fc.record({
      kernel: fc.string(),
      initrd: fc.option(fc.string(), { nil: undefined }),
      cmdline: fc.string(),
    }, PLAIN),
    { nil: undefined },
  ),
  irqchip: fc.record({ picMaster: chip, picSlave: chip, ioapic: chip }, PLAIN),
  pit: struct(abi.kvmPitState2),
  clock: struct(abi.kvmClockData),
  devices: fc.dictionary(key, cborValue, { maxKeys: 4, noNullPrototype: true }),
  cmos: fc.uint8Array({ minLength: 128, maxLength: 128 }),
  accel: fc.constantFrom("kvm" as const, "emu" as const),
}, PLAIN).map((a) => {
  const spec = {
    name: a.name,
    guest: a.guest,
    memSize: a.memSize,
    vcpus: a.vcpus.length,
    ...(a.memstamp ? { memstamp: a.memstamp } : {}),
    ...(a.linux ? { linux: dropUndefined(a.linux) } : {}),
  };
  return {
    spec,
    vm: {
      config: { name: a.name, memSize: a.memSize, vcpus: a.vcpus.length },
      accel: a.accel,
      memory: { size: a.memSize },
      vcpus: a.vcpus,
      irqchip: a.irqchip,
      pit: a.pit,
      clock: a.clock,
      devices: { ...a.devices, cmos: { ram: a.cmos, index: 0x0f } },
    },
  };
});

/** `o` without its undefined-valued properties (the codec omits them, as JSON does). */
function dropUndefined<T extends object>(o: T): T {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as T;
}

// ---------------------------------------------------------------------------------------------
// CBOR round trips.

Deno.test("CBOR round-trips every machine state: KVM structs with u64/i64 bigints, blobs, nested device state", () => {
  fc.assert(
    fc.property(machineState, (m) => {
      assertEquals(decodeCbor(encodeCbor(m)), m);
    }),
    { numRuns: 100 },
  );
});

Deno.test("CBOR round-trips any nesting of numbers, bigints, strings, byte strings, typed arrays, null and booleans", () => {
  fc.assert(
    fc.property(cborValue, (v) => {
      assertEquals(decodeCbor(encodeCbor(v)), v);
    }),
    { numRuns: RUNS },
  );
});

Deno.test("CBOR decodes every bigint up to the 64-byte bignum limit as a bigint of the same value, either sign", () => {
  fc.assert(
    fc.property(
      fc.oneof(
        fc.bigInt({ min: -(2n ** 512n), max: 2n ** 512n - 1n }),
        fc.constantFrom(...BOUNDARY_BIGINTS),
      ),
      (b) => {
        const back = decodeCbor(encodeCbor(b));
        assert(typeof back === "bigint" && back === b, `${b} came back as ${String(back)}`);
      },
    ),
    { numRuns: RUNS },
  );
});

Deno.test("CBOR keeps typed arrays' exact bytes and element types (Float64Array NaN payloads included)", () => {
  const f = new Float64Array(3);
  new DataView(f.buffer).setBigUint64(0, 0x7ff8_0000_dead_beefn, true); // a NaN with a payload
  f[1] = -0;
  f[2] = Infinity;
  const back = decodeCbor(encodeCbor([f, Uint16Array.of(1, 0xffff)])) as [
    Float64Array,
    Uint16Array,
  ];
  assert(back[0] instanceof Float64Array && back[1] instanceof Uint16Array);
  assertEquals(new Uint8Array(back[0].buffer), new Uint8Array(f.buffer));
  assertEquals([...back[1]], [1, 0xffff]);
  // A view into a larger buffer encodes only its own elements.
  const view = Uint32Array.of(9, 1, 2, 9).subarray(1, 3);
  assertEquals(decodeCbor(encodeCbor(view)), Uint32Array.of(1, 2));
});

Deno.test("CBOR writes the documented bytes: shortest heads, bigints as tags 2/3, typed arrays as little-endian tags 69/70/71/86", () => {
  const hex = (v: unknown) =>
    [...encodeCbor(v)].map((b) => b.toString(16).padStart(2, "0")).join(" ");
  assertEquals(hex(23), "17");
  assertEquals(hex(24), "18 18");
  assertEquals(hex(256), "19 01 00");
  assertEquals(hex(65536), "1a 00 01 00 00");
  assertEquals(hex(2 ** 32), "1b 00 00 00 01 00 00 00 00");
  assertEquals(hex(-1), "20");
  assertEquals(hex(-257), "39 01 00");
  assertEquals(hex(0.5), "fb 3f e0 00 00 00 00 00 00");
  assertEquals(hex(2 ** 53), "fb 43 40 00 00 00 00 00 00"); // beyond safe integers: a float
  assertEquals(hex(0n), "c2 40");
  assertEquals(hex(5n), "c2 41 05");
  assertEquals(hex(-1n), "c3 40");
  assertEquals(hex(-257n), "c3 42 01 00");
  assertEquals(hex(2n ** 64n), "c2 49 01 00 00 00 00 00 00 00 00");
  assertEquals(hex(Uint16Array.of(0x0102)), "d8 45 42 02 01");
  assertEquals(hex(Uint32Array.of(1)), "d8 46 44 01 00 00 00");
  assertEquals(hex(BigUint64Array.of(1n)), "d8 47 48 01 00 00 00 00 00 00 00");
  assertEquals(hex(Float64Array.of(1)), "d8 56 48 00 00 00 00 00 00 f0 3f");
  assertEquals(hex(Uint8Array.of(7)), "41 07");
  assertEquals(hex("é"), "62 c3 a9");
  assertEquals(hex([null, true, false]), "83 f6 f5 f4");
  assertEquals(hex({ a: 1, skipped: undefined }), "a1 61 61 01");
  // On input, a 64-bit integer beyond 2^53 - 1 decodes as a bigint.
  assertEquals(decodeCbor(Uint8Array.of(0x1b, 0, 0x20, 0, 0, 0, 0, 0, 0)), 2n ** 53n);
  assertEquals(
    decodeCbor(Uint8Array.of(0x3b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff)),
    -(2n ** 64n),
  );
});

Deno.test("a bigint past the 64-byte bignum limit is refused on encode and on decode, by name", () => {
  for (const b of [2n ** 512n, -(2n ** 512n) - 1n, 2n ** 1100n]) {
    assertThrows(() => encodeCbor(b), CborError, "-byte limit");
  }
  const big = new Uint8Array(2 + 1 + 65).fill(1);
  big.set([0xc2, 0x58, 65]);
  assertThrows(() => decodeCbor(big), CborError, "bignum of 65 bytes exceeds the 64-byte limit");
});

Deno.test("-0 survives a CBOR round trip", () => {
  // encodeCbor writes -0 as the integer 0: Number.isSafeInteger(-0) is true.
  assert(Object.is(decodeCbor(encodeCbor(-0)), -0), "-0 came back as +0");
});

Deno.test("anything encodeCbor accepts, decodeCbor decodes: bigints and typed arrays at every depth up to the limit", () => {
  // Today encodeCbor allows a value at depth 64, and decodeCbor, which reads a tag's byte string
  // one level deeper, refuses a bigint or typed array there as "nesting too deep".
  for (const inner of [1n, Uint32Array.of(1)]) {
    for (let depth = 60; depth <= 66; depth++) {
      let v: unknown = inner;
      for (let i = 0; i < depth; i++) v = [v];
      let bytes: Uint8Array;
      try {
        bytes = encodeCbor(v);
      } catch (e) {
        assert(e instanceof CborError, `depth ${depth}: ${e}`);
        continue; // refused on encode: fine
      }
      assertEquals(decodeCbor(bytes), v, `depth ${depth}: encoded, so it must decode`);
    }
  }
});

// ---------------------------------------------------------------------------------------------
// Malformed CBOR: CborError only, quickly.

/** decodeCbor(bytes) returns or throws CborError ("... at byte N"), within a bounded time. */
function decodesOrCborError(bytes: Uint8Array): void {
  const t0 = performance.now();
  try {
    decodeCbor(bytes);
  } catch (e) {
    if (!(e instanceof CborError)) {
      throw new Error(
        `decodeCbor threw ${(e as Error)?.name} (${(e as Error)?.message}) on ${
          [...bytes].map((b) => b.toString(16).padStart(2, "0")).join(" ")
        }`,
      );
    }
    assert(/ at byte \d+$/.test(e.message), e.message);
    assert(e.offset >= 0 && e.offset <= bytes.length, e.message);
  }
  assert(performance.now() - t0 < 1000, "decoding took more than a second");
}

Deno.test("decodeCbor on random bytes returns or throws CborError, never another exception, never hangs", () => {
  fc.assert(
    fc.property(fc.uint8Array({ maxLength: 64 }), decodesOrCborError),
    { numRuns: 2000 },
  );
});

Deno.test("decodeCbor on damaged valid encodings returns or throws CborError, never another exception", () => {
  fc.assert(
    fc.property(
      cborValue,
      fc.array(fc.tuple(fc.nat(), fc.nat(255)), { minLength: 1, maxLength: 4 }),
      fc.option(fc.nat(), { nil: undefined }),
      (v, edits, cut) => {
        const bytes = encodeCbor(v);
        for (const [at, b] of edits) if (bytes.length) bytes[at % bytes.length] = b;
        decodesOrCborError(cut === undefined ? bytes : bytes.subarray(0, cut % (bytes.length + 1)));
      },
    ),
    { numRuns: RUNS },
  );
});

Deno.test("decodeCbor refuses invalid UTF-8 in a text string with CborError", () => {
  assertThrows(() => decodeCbor(Uint8Array.of(0x61, 0xff)), CborError, "at byte");
});

Deno.test("decodeCbor refuses huge declared lengths, deep nesting and trailing bytes at once, by name", () => {
  const cases: Array<[number[], string]> = [
    [[0x5b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff], "exceeds the 0 bytes left"],
    [[0x9b, 0, 0, 0, 1, 0, 0, 0, 0], "exceeds the 0 bytes left"],
    [[0xbb, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff], "exceeds the 0 bytes left"],
    [new Array(100_000).fill(0x81), "nesting too deep"],
    [new Array(100_000).fill(0xc2), "nesting too deep"],
    [[0x01, 0x02], "1 trailing bytes"],
    [[0x9f], "unsupported additional info 31"], // indefinite-length array
    [[0xf9, 0x3c, 0x00], "unsupported item 0xf9"], // half float
    [[0xc1, 0x00], "tag 1 needs a byte string"],
    [[0xc1, 0x40], "unsupported tag 1"],
    [[0xd8, 0x46, 0x43, 1, 2, 3], "tag 70 payload is not a multiple of 4"],
    [[0xa1, 0x01, 0x01], "map key is not a string"],
    [[0xa1, 0x69, ...new TextEncoder().encode("__proto__"), 0x01], "forbidden map key"],
    [[], "truncated"],
  ];
  for (const [bytes, what] of cases) {
    const t0 = performance.now();
    assertThrows(() => decodeCbor(Uint8Array.from(bytes)), CborError, what);
    assert(performance.now() - t0 < 200, `${what}: took ${performance.now() - t0} ms`);
  }
});

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
