/**
 * Damaged checkpoint files (docs/FORMAT.md), random damage: whatever happens to a fragment or a
 * manifest on disk — bytes flipped or overwritten, the file cut short or extended, ranges swapped or
 * zeroed — the readers either refuse it with a CheckpointFormatError that names the file and the
 * byte, or (only when the damage left the bytes as they were, or touched only a superseded page copy
 * that nothing reads) return exactly what was saved. Forged fields with fixed-up checksums are
 * refused with a format error or read, never crash a reader.
 */
import fc from "fast-check";
import { join } from "node:path";
import { assert, assertEquals, sameBytes } from "./helpers/assert.ts";
import { CheckpointFormatError, crc32 } from "../src/ckpt/format.ts";
import { PAGE_SIZE as PAGE } from "../src/accel/accel.ts";
import {
  CHUNK_FLAG,
  chunkEntry,
  fragmentFooter,
  HEADER_CRC_OFFSET,
  HEADER_SIZE,
  PAGE_FLAG,
  pageEntry,
} from "../src/ckpt/fragment_layout.ts";
import { decodeManifest, encodeManifest, type Manifest } from "../src/ckpt/manifest.ts";
import {
  FOOTER,
  FRAG_PAGES,
  MANIFEST_HEADER,
  manifestFor,
  readFragment,
  withTempDir,
  writeFragment,
} from "./helpers/ckpt_fixture.ts";

const RUNS = 300;

// ---------------------------------------------------------------------------------------------
// Damage: what can happen to a file's bytes.

type Damage =
  | { kind: "overwrite"; at: number; bytes: Uint8Array }
  | { kind: "flip"; at: number; mask: number }
  | { kind: "truncate"; len: number }
  | { kind: "append"; bytes: Uint8Array }
  | { kind: "appendTail"; len: number }
  | { kind: "swap"; a: number; b: number; len: number }
  | { kind: "zero"; at: number; len: number };

/**
 * Damage to a file of `size` bytes. Positions are uniform over the file or near `hot` offsets
 * (field boundaries, where damage is most likely to slip past a check).
 */
function damageArb(size: number, hot: number[]): fc.Arbitrary<Damage> {
  const near = fc.constantFrom(...hot).chain((h) =>
    fc.integer({ min: Math.max(0, h - 12), max: Math.min(size - 1, h + 12) })
  );
  const pos = fc.oneof({ arbitrary: fc.nat({ max: size - 1 }), weight: 2 }, {
    arbitrary: near,
    weight: 3,
  });
  const len = fc.integer({ min: 1, max: 64 });
  return fc.oneof(
    fc.record({
      kind: fc.constant("overwrite" as const),
      at: pos,
      bytes: fc.uint8Array({ minLength: 1, maxLength: 24 }),
    }),
    fc.record({
      kind: fc.constant("flip" as const),
      at: pos,
      mask: fc.integer({ min: 1, max: 255 }),
    }),
    fc.record({
      kind: fc.constant("truncate" as const),
      len: fc.oneof(fc.nat({ max: size }), near),
    }),
    fc.record({
      kind: fc.constant("append" as const),
      bytes: fc.uint8Array({ minLength: 1, maxLength: 200 }),
    }),
    fc.record({ kind: fc.constant("appendTail" as const), len: fc.integer({ min: 1, max: 200 }) }),
    fc.record({ kind: fc.constant("swap" as const), a: pos, b: pos, len }),
    fc.record({ kind: fc.constant("zero" as const), at: pos, len }),
  );
}

/** `orig` with `d` applied (a new array; positions beyond the end are clipped). */
function applyDamage(orig: Uint8Array, d: Damage): Uint8Array<ArrayBuffer> {
  const out = orig.slice();
  const clip = (n: number) => Math.min(n, out.length);
  switch (d.kind) {
    case "overwrite":
      out.set(d.bytes.subarray(0, Math.max(0, out.length - d.at)), clip(d.at));
      return out;
    case "flip":
      if (d.at < out.length) out[d.at] ^= d.mask;
      return out;
    case "truncate":
      return out.slice(0, d.len);
    case "append":
    case "appendTail": {
      const extra = d.kind === "append" ? d.bytes : out.slice(Math.max(0, out.length - d.len));
      const grown = new Uint8Array(out.length + extra.length);
      grown.set(out);
      grown.set(extra, out.length);
      return grown;
    }
    case "swap": {
      const lo = Math.min(d.a, d.b), hi = Math.max(d.a, d.b);
      const n = Math.min(d.len, hi - lo, out.length - hi);
      if (n <= 0) return out;
      const first = out.slice(lo, lo + n);
      out.copyWithin(lo, hi, hi + n);
      out.set(first, hi);
      return out;
    }
    case "zero":
      out.fill(0, clip(d.at), clip(d.at + d.len));
      return out;
  }
}

/**
 * The outcome rule for one damaged file: `read` throws a CheckpointFormatError naming `path` and
 * the byte, or — only if the bytes are unchanged, or changed only where `unread` says no reader
 * looks — returns exactly `expected`. Anything else (another exception type, a changed file
 * accepted, different content returned, a read taking seconds) fails. Returns which check caught
 * it ("unchanged" / "unread bytes" when it was accepted), numbers left out.
 */
function expectRefusedOrIdentical<T>(
  path: string,
  damaged: Uint8Array,
  original: Uint8Array,
  expected: T,
  read: () => T,
  unread?: Uint8Array,
): string {
  const unchanged = sameBytes(damaged, original);
  const onlyUnread = !unchanged && !!unread && damaged.length === original.length &&
    damaged.every((b, i) => b === original[i] || unread[i] === 1);
  const t0 = performance.now();
  let got: T;
  try {
    got = read();
  } catch (e) {
    if (!(e instanceof CheckpointFormatError)) {
      throw new Error(
        `damage made the reader throw ${(e as Error)?.name} instead of a format error`,
        {
          cause: e,
        },
      );
    }
    assert(e.message.startsWith(`${path}: at byte `), `message names the file: ${e.message}`);
    assert(e.file === path && Number.isInteger(e.offset) && e.offset >= 0, e.message);
    assert(!unchanged, `an undamaged file was refused: ${e.message}`);
    return e.problem.replace(/\d+/g, "N");
  } finally {
    assert(performance.now() - t0 < 5000, "reading a damaged file took more than 5 s");
  }
  assert(unchanged || onlyUnread, "a changed file was accepted: the damage went undetected");
  assertEquals(got, expected);
  return unchanged ? "unchanged" : "unread bytes";
}

/**
 * Bytes of a fragment that no check covers, by design: the pages of uncompressed chunks that the
 * page table does not reference (superseded copies; their chunk has no CRC, docs/FORMAT.md 2.2).
 * 1 marks such a byte.
 */
function unreferencedBytes(file: Uint8Array): Uint8Array {
  const dv = new DataView(file.buffer, file.byteOffset, file.byteLength);
  const footer = file.length - FOOTER;
  const indexOff = Number(dv.getBigUint64(footer + 8, true));
  const chunks = dv.getUint32(footer + 24, true), pages = dv.getUint32(footer + 28, true);
  const out = new Uint8Array(file.length);
  out.fill(1, HEADER_SIZE, indexOff);
  const chunk = (c: number) => chunkEntry.read(dv, indexOff + c * chunkEntry.size);
  for (let c = 0; c < chunks; c++) {
    const e = chunk(c);
    if (e.flags & CHUNK_FLAG.ZSTD) out.fill(0, Number(e.offset), Number(e.offset) + e.stored_len);
  }
  for (let i = 0; i < pages; i++) {
    const p = pageEntry.read(dv, indexOff + chunks * chunkEntry.size + i * pageEntry.size);
    if (p.flags & PAGE_FLAG.ZERO) continue;
    const at = Number(chunk(p.chunk).offset) + p.slot * PAGE;
    out.fill(0, at, at + PAGE);
  }
  return out;
}

/** Offsets worth aiming damage at in a fragment: header fields, CRCs, index entries, footer. */
function fragmentHotspots(file: Uint8Array): number[] {
  const size = file.length;
  const dv = new DataView(file.buffer, file.byteOffset, file.byteLength);
  const footer = size - FOOTER;
  const indexOff = Number(dv.getBigUint64(footer + 8, true));
  const hot = [0, 8, 10, 12, 16, 20, 24, 40, 48, HEADER_CRC_OFFSET, HEADER_SIZE, indexOff];
  for (let o = indexOff; o < footer; o += chunkEntry.size) hot.push(o, o + 8, o + 12, o + 16);
  for (const k of Object.values(fragmentFooter.offsets)) hot.push(footer + k);
  return hot.filter((h) => h < size);
}

// ---------------------------------------------------------------------------------------------
// Property tests: random damage.

function fragmentDamageProperty(compress: boolean): Promise<void> {
  return withTempDir(async (dir) => {
    const origPath = join(dir, "orig.frag");
    await writeFragment(origPath, compress);
    const original = Deno.readFileSync(origPath);
    const expected = readFragment(origPath);
    assertEquals(expected.gfns, [0, 1, 2, 3, 4, 5, 6, 7]);
    const path = join(dir, "damaged.frag");
    // The copy of gfn 1 superseded by its second save is the only unread page (uncompressed: its
    // bytes are outside every checksum; zstd: the chunk CRC still covers it).
    const unread = unreferencedBytes(original);
    assertEquals(unread.reduce((n, b) => n + b, 0), compress ? 0 : PAGE);
    const caughtBy = new Set<string>();
    fc.assert(
      fc.property(
        fc.array(damageArb(original.length, fragmentHotspots(original)), {
          minLength: 1,
          maxLength: 2,
        }),
        (damages) => {
          const damaged = damages.reduce(applyDamage, original);
          Deno.writeFileSync(path, damaged);
          caughtBy.add(
            expectRefusedOrIdentical(
              path,
              damaged,
              original,
              expected,
              () => readFragment(path),
              unread,
            ),
          );
        },
      ),
      { numRuns: RUNS },
    );
    // The damage reached the header, the index, the footer and the page data.
    for (
      const check of [
        "header checksum mismatch",
        "index checksum mismatch",
        "footer checksum mismatch",
        "no footer (the fragment was not finished, or is truncated)",
        compress ? "chunk N checksum mismatch" : "page gfn N checksum mismatch (corrupt data)",
      ]
    ) assert(caughtBy.has(check), `no damage was caught by "${check}": ${[...caughtBy]}`);
  });
}

Deno.test("a damaged fragment is refused by name and byte, or read back identical only when no byte it uses changed", () =>
  fragmentDamageProperty(false));

Deno.test("a damaged zstd fragment is refused by name and byte, or read back identical only when its bytes are unchanged", () =>
  fragmentDamageProperty(true));

Deno.test("a damaged manifest is refused by name and byte, or decodes identical only when its bytes are unchanged", () => {
  const file = "/store/g000003/MANIFEST";
  const m = manifestFor(FRAG_PAGES, "g000003/main.frag", 0x12345678);
  const original = encodeManifest(m);
  const expected = decodeManifest(file, original);
  assertEquals(expected, m);
  const len = original.length - MANIFEST_HEADER - 12;
  const hot = [0, 8, 10, 12, 14, 16, 24, 25, 40, 24 + len, 28 + len, original.length - 1];
  const caughtBy = new Set<string>();
  fc.assert(
    fc.property(
      fc.array(damageArb(original.length, hot), { minLength: 1, maxLength: 2 }),
      (damages) => {
        const damaged = damages.reduce(applyDamage, original);
        caughtBy.add(
          expectRefusedOrIdentical(
            file,
            damaged,
            original,
            expected,
            () => decodeManifest(file, damaged),
          ),
        );
      },
    ),
    { numRuns: RUNS },
  );
  for (
    const check of ["wrong magic", "checksum mismatch", "end marker missing", "does not match"]
  ) {
    assert(
      [...caughtBy].some((c) => c.includes(check)),
      `none caught by "${check}": ${[...caughtBy]}`,
    );
  }
});

/**
 * Recomputes every checksum of a (damaged) fragment wherever the damaged layout still says where
 * they are: what a buggy writer, or one that means harm, would produce.
 */
function fixChecksums(file: Uint8Array): void {
  const dv = new DataView(file.buffer, file.byteOffset, file.byteLength);
  if (file.length < HEADER_SIZE + FOOTER) return;
  dv.setUint32(HEADER_CRC_OFFSET, crc32(file.subarray(0, HEADER_CRC_OFFSET)), true);
  const footer = file.length - FOOTER;
  const indexOff = Number(dv.getBigUint64(footer + 8, true));
  const indexLen = Number(dv.getBigUint64(footer + 16, true));
  if (indexOff >= HEADER_SIZE && indexOff + indexLen === footer) {
    const chunks = dv.getUint32(footer + 24, true);
    for (let i = 0; i < chunks && indexOff + (i + 1) * chunkEntry.size <= footer; i++) {
      const e = indexOff + i * chunkEntry.size;
      const off = Number(dv.getBigUint64(e, true)), len = dv.getUint32(e + 8, true);
      if (off + len <= indexOff) dv.setUint32(e + 20, crc32(file.subarray(off, off + len)), true);
    }
    dv.setUint32(footer + 36, crc32(file.subarray(indexOff, footer)), true);
  }
  dv.setUint32(footer + 60, crc32(file.subarray(footer, footer + 60)), true);
}

Deno.test("a fragment whose header, index or footer fields were changed with checksums fixed up is refused with a format error or read, never crashes the reader", () =>
  withTempDir(async (dir) => {
    for (const compress of [false, true]) {
      const origPath = join(dir, `orig-${compress}.frag`);
      await writeFragment(origPath, compress);
      const original = Deno.readFileSync(origPath);
      const size = original.length;
      const hot = fragmentHotspots(original).filter((h) => h < 64 || h >= HEADER_SIZE + PAGE);
      const path = join(dir, "forged.frag");
      const fieldDamage = damageArb(size, hot).filter((d) =>
        d.kind === "overwrite" || d.kind === "flip" || d.kind === "zero"
      );
      const caughtBy = new Set<string>();
      fc.assert(
        fc.property(fc.array(fieldDamage, { minLength: 1, maxLength: 3 }), (damages) => {
          const forged = damages.reduce(applyDamage, original);
          fixChecksums(forged);
          Deno.writeFileSync(path, forged);
          try {
            const got = readFragment(path);
            // Accepted: every page it returns passed its CRC, and the page table is sane.
            assert(got.gfns.every((g, i) => i === 0 || g > got.gfns[i - 1]));
          } catch (e) {
            if (!(e instanceof CheckpointFormatError)) {
              throw new Error(`forged fields made the reader throw ${(e as Error)?.name}`, {
                cause: e,
              });
            }
            assert(e.message.startsWith(`${path}: at byte `), e.message);
            caughtBy.add(e.problem.replace(/\d+/g, "N"));
          }
        }),
        { numRuns: RUNS },
      );
      // With the checksums fixed, the field checks behind them did the refusing.
      assert(
        caughtBy.size >= 6,
        `only ${caughtBy.size} different checks refused: ${[...caughtBy]}`,
      );
    }
  }));

/** Values of the wrong kind for a manifest field. */
const WRONG_VALUES: unknown[] = [
  null,
  true,
  -1,
  "ab",
  [1, 2],
  {},
  Uint32Array.of(0, 1, 7),
  new Uint8Array(3),
];

Deno.test("a checksummed manifest whose fields have the wrong types is refused with a format error or decoded, never another exception", () => {
  const file = "/store/g000003/MANIFEST";
  const m = manifestFor(FRAG_PAGES, "g000003/main.frag", 1);
  const keys = Object.keys(m) as Array<keyof Manifest>;
  const check = (changes: Array<[string, unknown]>) => {
    const forged: Record<string, unknown> = { ...m };
    for (const [k, v] of changes) forged[k] = v;
    try {
      decodeManifest(file, encodeManifest(forged as unknown as Manifest));
    } catch (e) {
      if (!(e instanceof CheckpointFormatError)) {
        throw new Error(
          `fields ${JSON.stringify(changes.map(([k, v]) => [k, String(v)]))} made ` +
            `decodeManifest throw ${(e as Error)?.name}: ${(e as Error)?.message}`,
          { cause: e },
        );
      }
    }
  };
  // Every field with every wrong value, then random combinations of a few.
  for (const k of keys) for (const v of WRONG_VALUES) check([[k, v]]);
  fc.assert(
    fc.property(
      fc.array(fc.tuple(fc.constantFrom(...keys), fc.constantFrom(...WRONG_VALUES)), {
        minLength: 2,
        maxLength: 4,
      }),
      check,
    ),
    { numRuns: RUNS },
  );
});
