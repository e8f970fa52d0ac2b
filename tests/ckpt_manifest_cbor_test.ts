/**
 * The CBOR subset the manifest is written in (docs/FORMAT.md): it round-trips everything a
 * MachineState holds and refuses malformed input with CborError only, quickly.
 */
import fc from "fast-check";
import { assert, assertEquals, assertThrows } from "./helpers/assert.ts";
import { CborError, decodeCbor, encodeCbor } from "../src/codec/cbor.ts";
import { BOUNDARY_BIGINTS, cborValue, machineState } from "./helpers/cbor_arbitraries.ts";

const RUNS = 300;

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
