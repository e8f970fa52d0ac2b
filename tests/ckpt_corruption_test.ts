/**
 * Damaged checkpoint files (docs/FORMAT.md): whatever happens to a fragment or a manifest on disk —
 * bytes flipped or overwritten, the file cut short or extended, ranges swapped or zeroed — the
 * readers either refuse it with a CheckpointFormatError that names the file and the byte, or (only
 * when the damage left the bytes as they were, or touched only a superseded page copy that nothing
 * reads) return exactly what was saved. Then one test per way a file can be bad, and the
 * restore-time cross-checks that bind a manifest to its fragments.
 */
import fc from "fast-check";
import zlib from "node:zlib";
import { join } from "node:path";
import { assert, assertEquals, assertThrows } from "./helpers/assert.ts";
import {
  CheckpointFormatError,
  crc32,
  FRAGMENT_VERSION,
  MANIFEST_VERSION,
} from "../src/ckpt/format.ts";
import { PAGE_SIZE as PAGE } from "../src/accel/accel.ts";
import { FragmentWriter, type PageSource } from "../src/ckpt/fragment_writer.ts";
import { FragmentReader } from "../src/ckpt/fragment_reader.ts";
import {
  CHUNK_FLAG,
  chunkEntry,
  fragmentFooter,
  HEADER_CRC_OFFSET,
  HEADER_SIZE,
  PAGE_FLAG,
  pageEntry,
} from "../src/ckpt/fragment_layout.ts";
import {
  commitManifest,
  decodeManifest,
  encodeManifest,
  type Manifest,
  readManifest,
} from "../src/ckpt/manifest.ts";
import { encodeCbor } from "../src/codec/cbor.ts";
import { CheckpointStore } from "../src/ckpt/store.ts";
import { OpenCheckpoint } from "../src/ckpt/open_checkpoint.ts";
import * as abi from "../src/ffi/kvm_abi.ts";
import type { MachineState } from "../src/vmm/machine.ts";

const RUNS = 300;
const FOOTER = fragmentFooter.size; // 64
const MANIFEST_HEADER = 24;

// ---------------------------------------------------------------------------------------------
// Fixtures: a small real fragment (written by FragmentWriter from a page-aligned buffer) and a
// small real manifest.

/**
 * A page-aligned buffer of `pages` pages, usable as a PageSource: the writer pwritev()s straight
 * from it, with O_DIRECT where the file system allows, which needs aligned memory.
 */
function alignedPages(pages: number): PageSource {
  const raw = new Uint8Array((pages + 1) * PAGE);
  const addr = BigInt(Deno.UnsafePointer.value(Deno.UnsafePointer.of(raw)));
  const skip = Number((BigInt(PAGE) - addr % BigInt(PAGE)) % BigInt(PAGE));
  return { bytes: raw.subarray(skip, skip + pages * PAGE), base: addr + BigInt(skip) };
}

/** Host address of `bytes[0]`. */
function addressOf(bytes: Uint8Array<ArrayBuffer>): bigint {
  return BigInt(Deno.UnsafePointer.value(Deno.UnsafePointer.of(bytes)));
}

const FRAG_PAGES = 8;
const ZERO_GFNS = [2, 5];
const CHECKPOINT_ID = Uint8Array.from({ length: 16 }, (_, i) => 0xa0 + i);

/** Guest memory of FRAG_PAGES pages: gfns 2 and 5 are zero, the rest hold distinct patterns. */
function guestMemory(): PageSource {
  const src = alignedPages(FRAG_PAGES);
  for (let g = 0; g < FRAG_PAGES; g++) {
    if (ZERO_GFNS.includes(g)) continue;
    const v = new DataView(src.bytes.buffer, src.bytes.byteOffset + g * PAGE, PAGE);
    // Compressible (repeats every 64 bytes) but different in every page and every 64-byte line.
    for (let o = 0; o < PAGE; o += 4) v.setUint32(o, (g * 0x9e3779b1 + (o % 64) * 131) >>> 0, true);
    v.setUint32(PAGE - 4, g, true);
  }
  return src;
}

/**
 * Writes a fragment of guestMemory() (changed by `edit`, if given): two chunks (a flush between two
 * appends, pages out of gfn order) and a page saved twice, so the first chunk holds a superseded
 * copy. Returns the footer CRC.
 */
async function writeFragment(
  path: string,
  compress: boolean,
  generation = 3,
  edit?: (mem: Uint8Array) => void,
): Promise<number> {
  const src = guestMemory();
  edit?.(src.bytes);
  const w = FragmentWriter.create(path, { checkpointId: CHECKPOINT_ID, generation, compress });
  await w.append([5, 1, 7, 0], src);
  await w.flush();
  await w.append([3, 2, 6, 4, 1], src);
  return (await w.finish()).footerCrc;
}

/** What a fragment holds, as read back through the reader's checks. */
interface FragmentContent {
  generation: number;
  checkpointId: number[];
  footerCrc: number;
  gfns: number[];
  flags: number[];
  /** Page i of the page table at i * PAGE. */
  bytes: Uint8Array;
}

/** Opens `path`, reads every page (page CRCs) and verifies every zstd chunk (chunk CRCs). */
function readFragment(path: string): FragmentContent {
  const r = FragmentReader.open(path);
  try {
    const idx = Array.from({ length: r.pages }, (_, i) => i);
    const dst = new Uint8Array(r.pages * PAGE);
    r.readInto(idx, dst, addressOf(dst), idx.map((i) => i * PAGE));
    r.verifyChunks();
    return {
      generation: r.generation,
      checkpointId: [...r.checkpointId],
      footerCrc: r.footerCrc,
      gfns: [...r.gfns],
      flags: [...r.pageFlags],
      bytes: dst,
    };
  } finally {
    r.close();
  }
}

/** A MachineState with the shape and value kinds a real one has (bigints, blobs, nested maps). */
function machineState(memSize: number): MachineState {
  const blob = (n: number, seed: number) =>
    Uint8Array.from({ length: n }, (_, i) => (i * 31 + seed * 17) & 0xff);
  const spec = { name: "vm1", guest: "memstamp" as const, memSize, vcpus: 1 };
  return {
    spec,
    vm: {
      config: { name: "vm1", memSize, vcpus: 1 },
      accel: "kvm",
      memory: { size: memSize },
      vcpus: [{
        index: 0,
        regs: abi.kvmRegs.decode(blob(abi.kvmRegs.size, 1)),
        sregs: abi.kvmSregs.decode(blob(abi.kvmSregs.size, 2)),
        xsave: blob(512, 3),
        xcrs: abi.kvmXcrs.decode(blob(abi.kvmXcrs.size, 4)),
        msrs: [{ index: 0xc0000080, data: 0xd01n }, { index: 0x10, data: 0xffff_ffff_ffff_fff0n }],
        lapic: blob(1024, 5),
        events: abi.kvmVcpuEvents.decode(blob(abi.kvmVcpuEvents.size, 6)),
        mpState: 0,
        debugregs: abi.kvmDebugregs.decode(blob(abi.kvmDebugregs.size, 7)),
        cpuid: [abi.kvmCpuidEntry2.decode(blob(abi.kvmCpuidEntry2.size, 8))],
      }],
      irqchip: { picMaster: blob(512, 9), picSlave: blob(512, 10), ioapic: blob(512, 11) },
      pit: abi.kvmPitState2.decode(blob(abi.kvmPitState2.size, 12)),
      clock: abi.kvmClockData.decode(blob(abi.kvmClockData.size, 13)),
      devices: { cmos: { ram: blob(128, 14), index: 3 }, serial: { ier: 1, rx: new Uint8Array() } },
    },
  };
}

/** A complete manifest of one fragment covering `pages` pages. */
function manifestFor(pages: number, fragPath: string, footerCrc: number): Manifest {
  return {
    dcresVersion: "0.1.0",
    id: [...CHECKPOINT_ID].map((b) => b.toString(16).padStart(2, "0")).join(""),
    vm: "vm1",
    generation: 3,
    parent: null,
    createdAt: "2025-01-01T00:00:00.000Z",
    mode: "stop",
    compressed: false,
    machine: machineState(pages * PAGE),
    fragments: [{ path: fragPath, host: "main", generation: 3, footerCrc, pages, bytes: 0 }],
    pageMap: Uint32Array.of(0, pages, 0),
    prefetchOrder: Uint32Array.from({ length: pages }, (_, i) => pages - 1 - i),
    stats: {
      pagesSaved: 6,
      zeroPages: 2,
      pagesReused: 0,
      pagesSavedTwice: 1,
      bytesWritten: 7 * PAGE,
      rounds: 1,
      downtimeMs: 1.25,
      totalMs: 3.5,
    },
  };
}

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

function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && a.every((x, i) => x === b[i]);
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

/** A fresh temp dir, removed after `fn`. */
async function withTempDir(fn: (dir: string) => Promise<void> | void): Promise<void> {
  const dir = Deno.makeTempDirSync({ prefix: "dcres-ckpt-corrupt-" });
  try {
    await fn(dir);
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
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

// ---------------------------------------------------------------------------------------------
// Each way a fragment can be bad, by name.

/**
 * Writes a fragment, lets `damage` edit its bytes in place (or return new bytes), returns the
 * damaged file's path.
 */
async function damagedFragment(
  dir: string,
  compress: boolean,
  damage: (file: Uint8Array, dv: DataView) => Uint8Array | void,
): Promise<string> {
  const path = join(dir, `f-${compress ? "zstd" : "raw"}.frag`);
  await writeFragment(path, compress);
  const file = Deno.readFileSync(path);
  const out = damage(file, new DataView(file.buffer)) ?? file;
  Deno.writeFileSync(path, out);
  return path;
}

/**
 * `f` with its last chunk's stored bytes replaced by `stored`, and the index, footer and every
 * checksum rewritten to match: a well-formed file, as a writer would have produced it.
 */
function replaceLastChunk(f: Uint8Array, stored: Uint8Array): Uint8Array {
  const dv = new DataView(f.buffer, f.byteOffset, f.byteLength);
  const footerOff = f.length - FOOTER;
  const indexOff = Number(dv.getBigUint64(footerOff + 8, true));
  const last = dv.getUint32(footerOff + 24, true) - 1;
  const chunkOff = Number(dv.getBigUint64(indexOff + last * chunkEntry.size, true));
  const index = f.slice(indexOff, footerOff);
  const idv = new DataView(index.buffer);
  idv.setUint32(last * chunkEntry.size + 8, stored.length, true);
  idv.setUint32(last * chunkEntry.size + 20, crc32(stored), true);
  const footer = f.slice(footerOff);
  const fdv = new DataView(footer.buffer);
  const newIndexOff = chunkOff + stored.length;
  fdv.setBigUint64(8, BigInt(newIndexOff), true);
  fdv.setUint32(36, crc32(index), true);
  fdv.setBigUint64(40, BigInt(newIndexOff - HEADER_SIZE), true);
  fdv.setUint32(60, crc32(footer.subarray(0, 60)), true);
  const out = new Uint8Array(newIndexOff + index.length + FOOTER);
  out.set(f.subarray(0, chunkOff));
  out.set(stored, chunkOff);
  out.set(index, newIndexOff);
  out.set(footer, newIndexOff + index.length);
  return out;
}

function footerAt(file: Uint8Array) {
  const footer = file.length - FOOTER;
  return { footer, ...fragmentFooter.decode(file.subarray(footer)) };
}

function rewriteHeaderCrc(file: Uint8Array, dv: DataView) {
  dv.setUint32(HEADER_CRC_OFFSET, crc32(file.subarray(0, HEADER_CRC_OFFSET)), true);
}

/** The reader refuses `path` with a format error at `offset` whose message contains `what`. */
function refuses(path: string, offset: number | undefined, what: string | RegExp): Error {
  const e = assertThrows(() => readFragment(path), CheckpointFormatError) as CheckpointFormatError;
  assert(e.message.startsWith(`${path}: at byte `), e.message);
  if (offset !== undefined) assertEquals(e.offset, offset, e.message);
  assert(typeof what === "string" ? e.message.includes(what) : what.test(e.message), e.message);
  return e;
}

for (const compress of [false, true]) {
  const kind = compress ? "zstd fragment" : "fragment";

  Deno.test(`a ${kind} with the wrong magic is refused at byte 0`, () =>
    withTempDir(async (dir) => {
      const path = await damagedFragment(
        dir,
        compress,
        (f) => f.set(new TextEncoder().encode("QCOW"), 0),
      );
      refuses(path, 0, "not a dcres fragment (wrong magic)");
    }));

  Deno.test(`a ${kind} shorter than a header and footer is refused as truncated`, () =>
    withTempDir(async (dir) => {
      for (const len of [0, 1, 100, HEADER_SIZE, HEADER_SIZE + FOOTER - 1]) {
        const path = join(dir, `short-${len}.frag`);
        await writeFragment(path, compress);
        Deno.truncateSync(path, len);
        refuses(path, len, `file is ${len} bytes, shorter than a header and footer (truncated?)`);
      }
    }));

  Deno.test(`a ${kind} cut short after its data is refused: no footer`, () =>
    withTempDir(async (dir) => {
      const path = join(dir, "cut.frag");
      await writeFragment(path, compress);
      const size = Deno.statSync(path).size;
      Deno.truncateSync(path, size - 1);
      refuses(
        path,
        size - 1 - FOOTER,
        "no footer (the fragment was not finished, or is truncated)",
      );
    }));

  Deno.test(`a ${kind} with a bad header checksum is refused at the header CRC`, () =>
    withTempDir(async (dir) => {
      const path = await damagedFragment(dir, compress, (f) => {
        f[1000] ^= 0x40;
      });
      refuses(path, HEADER_CRC_OFFSET, "header checksum mismatch");
    }));

  Deno.test(`a ${kind} with a bad index checksum is refused at the index`, () =>
    withTempDir(async (dir) => {
      let indexOff = 0;
      const path = await damagedFragment(dir, compress, (f) => {
        indexOff = Number(footerAt(f).index_offset);
        f[indexOff + chunkEntry.size * 2 + 3] ^= 1; // a page entry's gfn
      });
      refuses(path, indexOff, "index checksum mismatch");
    }));

  Deno.test(`a ${kind} with a bad footer checksum is refused at the footer CRC`, () =>
    withTempDir(async (dir) => {
      let size = 0;
      const path = await damagedFragment(dir, compress, (f) => {
        size = f.length;
        f[size - FOOTER + 50] = 0xff; // reserved, covered by the footer CRC
      });
      refuses(path, size - 4, "footer checksum mismatch");
    }));

  Deno.test(`a ${kind} with a newer minor version is refused by name with both versions`, () =>
    withTempDir(async (dir) => {
      const minor = FRAGMENT_VERSION.minor + 1;
      const path = await damagedFragment(dir, compress, (f, dv) => {
        dv.setUint16(10, minor, true);
        rewriteHeaderCrc(f, dv);
      });
      const v = `${FRAGMENT_VERSION.major}.${minor}.${FRAGMENT_VERSION.patch}`;
      const reads =
        `reads ${FRAGMENT_VERSION.major}.0 to ${FRAGMENT_VERSION.major}.${FRAGMENT_VERSION.minor}`;
      const e = refuses(path, 8, `fragment format version ${v} is not readable by this dcres`);
      assert(
        e.message.includes(reads) && e.message.includes(`use a dcres that writes ${v}`),
        e.message,
      );
    }));

  Deno.test(`a ${kind} with a newer major version is refused by name with both versions`, () =>
    withTempDir(async (dir) => {
      const major = FRAGMENT_VERSION.major + 1;
      const path = await damagedFragment(dir, compress, (f, dv) => {
        dv.setUint16(8, major, true);
        dv.setUint16(10, 0, true);
        rewriteHeaderCrc(f, dv);
      });
      const e = refuses(path, 8, `fragment format version ${major}.0.${FRAGMENT_VERSION.patch}`);
      assert(e.message.includes(`(reads ${FRAGMENT_VERSION.major}.0 to `), e.message);
    }));

  Deno.test(`a ${kind} with a newer patch version is read: patches change no byte's meaning`, () =>
    withTempDir(async (dir) => {
      const path = await damagedFragment(dir, compress, (f, dv) => {
        dv.setUint16(12, FRAGMENT_VERSION.patch + 7, true);
        rewriteHeaderCrc(f, dv);
      });
      assertEquals(readFragment(path).gfns, [0, 1, 2, 3, 4, 5, 6, 7]);
    }));
}

Deno.test("an altered page of a fragment is refused on read naming its gfn and its byte", () =>
  withTempDir(async (dir) => {
    const gfn = 6;
    let pageOff = 0;
    const path = await damagedFragment(dir, false, (f, dv) => {
      // Find gfn 6's slot through the index, then change one byte of its data.
      const { footer } = footerAt(f);
      const indexOff = Number(dv.getBigUint64(footer + 8, true));
      const chunks = dv.getUint32(footer + 24, true);
      const at = indexOff + chunks * chunkEntry.size + gfn * pageEntry.size;
      const p = pageEntry.read(dv, at);
      assertEquals(Number(p.gfn), gfn);
      const c = chunkEntry.read(dv, indexOff + p.chunk * chunkEntry.size);
      pageOff = Number(c.offset) + p.slot * PAGE;
      f[pageOff + 123] ^= 0x80;
    });
    const r = FragmentReader.open(path); // open reads no page data: the damage is found on read
    try {
      const dst = new Uint8Array(PAGE);
      const e = assertThrows(
        () => r.readInto([r.find(gfn)], dst, addressOf(dst), [0]),
        CheckpointFormatError,
        `page gfn ${gfn} checksum mismatch (corrupt data)`,
      ) as CheckpointFormatError;
      assertEquals(e.offset, pageOff);
      assert(e.message.startsWith(`${path}: at byte ${pageOff}: `), e.message);
      // The other pages still read.
      r.readInto([r.find(7)], dst, addressOf(dst), [0]);
    } finally {
      r.close();
    }
  }));

Deno.test("an altered page inside a re-compressed, re-checksummed zstd chunk is refused naming its gfn", () =>
  withTempDir(async (dir) => {
    const gfn = 3;
    let chunkOff = 0;
    const path = await damagedFragment(dir, true, (f, dv) => {
      // The second (last) chunk holds gfn 3: inflate it, alter the page, re-compress, and rewrite
      // the chunk, index and footer CRCs so that only the page CRC can tell.
      const { footer } = footerAt(f);
      const indexOff = Number(dv.getBigUint64(footer + 8, true));
      const p = pageEntry.read(dv, indexOff + 2 * chunkEntry.size + gfn * pageEntry.size);
      assertEquals([Number(p.gfn), p.chunk], [gfn, 1]);
      const c = chunkEntry.read(dv, indexOff + chunkEntry.size);
      chunkOff = Number(c.offset);
      const z = f.subarray(chunkOff, chunkOff + c.stored_len);
      const raw = new Uint8Array(zlib.zstdDecompressSync(z));
      raw[p.slot * PAGE + 9] ^= 1;
      return replaceLastChunk(f, new Uint8Array(zlib.zstdCompressSync(raw)));
    });
    refuses(path, chunkOff, `page gfn ${gfn} checksum mismatch`);
  }));

Deno.test("a zstd chunk that does not decompress is refused naming the chunk", () =>
  withTempDir(async (dir) => {
    let chunkOff = 0;
    const path = await damagedFragment(dir, true, (f, dv) => {
      const { footer } = footerAt(f);
      const indexOff = Number(dv.getBigUint64(footer + 8, true));
      chunkOff = Number(chunkEntry.read(dv, indexOff + chunkEntry.size).offset);
      return replaceLastChunk(f, new Uint8Array(100).fill(0x55)); // garbage with a matching CRC
    });
    refuses(path, chunkOff, "chunk 1 does not decompress");
  }));

Deno.test("a fragment extended past its footer is refused: the footer must end the file", () =>
  withTempDir(async (dir) => {
    let size = 0;
    const path = join(dir, "long.frag");
    await writeFragment(path, false);
    const f = Deno.readFileSync(path);
    size = f.length;
    const longer = new Uint8Array(size + FOOTER);
    longer.set(f);
    longer.set(f.subarray(size - FOOTER), size); // even a second, valid footer
    Deno.writeFileSync(path, longer);
    refuses(path, size + 8, `does not end at the footer (${size})`);
  }));

Deno.test("a fragment whose index lists pages out of order is refused even with valid checksums", () =>
  withTempDir(async (dir) => {
    let at = 0;
    const path = await damagedFragment(dir, false, (f, dv) => {
      const { footer } = footerAt(f);
      const indexOff = Number(dv.getBigUint64(footer + 8, true));
      const pages = indexOff + 2 * chunkEntry.size;
      dv.setBigUint64(pages + 4 * pageEntry.size, 2n, true); // gfn 4 -> 2, after 3
      at = pages + 4 * pageEntry.size;
      dv.setUint32(footer + 36, crc32(f.subarray(indexOff, footer)), true);
      dv.setUint32(footer + 60, crc32(f.subarray(footer, footer + 60)), true);
    });
    refuses(path, at, "page table not strictly ascending at gfn 2");
  }));

Deno.test("an empty fragment (no pages) is valid and reads as empty", () =>
  withTempDir(async (dir) => {
    const path = join(dir, "empty.frag");
    const w = FragmentWriter.create(path, { checkpointId: CHECKPOINT_ID, generation: 1 });
    const sum = await w.finish();
    assertEquals(sum.fileBytes, HEADER_SIZE + FOOTER);
    assertEquals(readFragment(path).gfns, []);
  }));

Deno.test("a missing fragment file is refused by name", () =>
  withTempDir((dir) => {
    const path = join(dir, "nothing.frag");
    refuses(path, 0, "cannot open");
  }));

Deno.test("the checksum is CRC-32 with zlib's polynomial (check value of '123456789')", () => {
  assertEquals(crc32(new TextEncoder().encode("123456789")), 0xcbf43926);
});

// ---------------------------------------------------------------------------------------------
// Each way a manifest can be bad, by name.

const MFILE = "/store/g000003/MANIFEST";

function manifestBytes(): { bytes: Uint8Array<ArrayBuffer>; dv: DataView; bodyLen: number } {
  const bytes = encodeManifest(manifestFor(FRAG_PAGES, "g000003/main.frag", 7));
  return { bytes, dv: new DataView(bytes.buffer), bodyLen: bytes.length - MANIFEST_HEADER - 12 };
}

function rewriteManifestCrc(bytes: Uint8Array, dv: DataView, bodyLen: number) {
  dv.setUint32(
    MANIFEST_HEADER + bodyLen,
    crc32(bytes.subarray(0, MANIFEST_HEADER + bodyLen)),
    true,
  );
}

/** decodeManifest refuses `bytes` with a format error at `offset` whose message contains `what`. */
function refusesManifest(bytes: Uint8Array, offset: number, what: string): CheckpointFormatError {
  const e = assertThrows(
    () => decodeManifest(MFILE, bytes),
    CheckpointFormatError,
    what,
  ) as CheckpointFormatError;
  assert(e.message.startsWith(`${MFILE}: at byte ${offset}: `), e.message);
  return e;
}

Deno.test("a manifest with the wrong magic is refused at byte 0", () => {
  const { bytes } = manifestBytes();
  bytes[3] = 0x3f;
  refusesManifest(bytes, 0, "not a dcres manifest (wrong magic)");
});

Deno.test("a manifest shorter than its header and trailer is refused as truncated", () => {
  const { bytes } = manifestBytes();
  for (const len of [0, 7, 24, 35]) {
    refusesManifest(bytes.subarray(0, len), len, `file is ${len} bytes, too short for a manifest`);
  }
});

Deno.test("a manifest cut short or extended is refused: the body length does not match", () => {
  const { bytes } = manifestBytes();
  refusesManifest(bytes.subarray(0, bytes.length - 1), 16, "(truncated or extended)");
  const longer = new Uint8Array(bytes.length + 3);
  longer.set(bytes);
  refusesManifest(longer, 16, "(truncated or extended)");
});

Deno.test("a manifest with its end marker damaged is refused at the marker", () => {
  const { bytes, bodyLen } = manifestBytes();
  bytes[bytes.length - 2] ^= 1;
  refusesManifest(bytes, 28 + bodyLen, "end marker missing");
});

Deno.test("a manifest with a changed reserved byte, body byte or checksum is refused: checksum mismatch", () => {
  // 14 and 15 are reserved (not interpreted, but covered); -12 is the CRC's first byte.
  for (const at of [14, 15, MANIFEST_HEADER, MANIFEST_HEADER + 100, -12]) {
    const { bytes, bodyLen } = manifestBytes();
    bytes[at < 0 ? bytes.length + at : at] ^= 0x10;
    refusesManifest(bytes, MANIFEST_HEADER + bodyLen, "manifest checksum mismatch");
  }
});

Deno.test("a manifest with a newer minor version is refused by name with both versions", () => {
  const { bytes, dv, bodyLen } = manifestBytes();
  const minor = MANIFEST_VERSION.minor + 1;
  dv.setUint16(10, minor, true);
  rewriteManifestCrc(bytes, dv, bodyLen);
  const v = `${MANIFEST_VERSION.major}.${minor}.${MANIFEST_VERSION.patch}`;
  const e = refusesManifest(bytes, 8, `manifest format version ${v} is not readable by this dcres`);
  assert(
    e.message.includes(
      `(reads ${MANIFEST_VERSION.major}.0 to ${MANIFEST_VERSION.major}.${MANIFEST_VERSION.minor})`,
    ),
    e.message,
  );
});

Deno.test("a manifest with a newer major version is refused by name with both versions", () => {
  const { bytes, dv, bodyLen } = manifestBytes();
  const major = MANIFEST_VERSION.major + 1;
  dv.setUint16(8, major, true);
  rewriteManifestCrc(bytes, dv, bodyLen);
  const v = `${major}.${MANIFEST_VERSION.minor}.${MANIFEST_VERSION.patch}`;
  const e = refusesManifest(bytes, 8, `manifest format version ${v} is not readable`);
  assert(e.message.includes(`use a dcres that writes ${v}`), e.message);
});

Deno.test("a manifest with a newer patch version decodes", () => {
  const { bytes, dv, bodyLen } = manifestBytes();
  dv.setUint16(12, MANIFEST_VERSION.patch + 1, true);
  rewriteManifestCrc(bytes, dv, bodyLen);
  assertEquals(decodeManifest(MFILE, bytes).vm, "vm1");
});

Deno.test("a 1.0 manifest (before the split field) is read by this 1.3 dcres", () => {
  const { bytes, dv, bodyLen } = manifestBytes();
  dv.setUint16(10, 0, true);
  rewriteManifestCrc(bytes, dv, bodyLen);
  const m = decodeManifest(MFILE, bytes);
  assertEquals([m.vm, m.split], ["vm1", undefined]);
});

Deno.test("a 1.1 manifest (before machine.vm.accel) is read by this 1.3 dcres as taken on KVM", () => {
  const old = manifestFor(FRAG_PAGES, "g000003/main.frag", 7);
  const { accel: _, ...vm } = old.machine.vm;
  const bytes = manifestWithBody(encodeCbor({ ...old, machine: { ...old.machine, vm } }));
  const dv = new DataView(bytes.buffer);
  dv.setUint16(10, 1, true);
  rewriteManifestCrc(bytes, dv, bytes.length - MANIFEST_HEADER - 12);
  const m = decodeManifest(MFILE, bytes);
  assertEquals(m.machine.vm.accel, "kvm");
  assertEquals(m.machine.vm.vcpus[0].regs, old.machine.vm.vcpus[0].regs);
  assertEquals(m.machine.vm.clock, old.machine.vm.clock);
});

Deno.test("a checksummed manifest naming an unknown accelerator is refused naming the field", () => {
  const m = manifestFor(FRAG_PAGES, "g000003/main.frag", 7);
  const vm = { ...m.machine.vm, accel: "xen\nforged line" };
  const bytes = manifestWithBody(encodeCbor({ ...m, machine: { ...m.machine, vm } }));
  assertThrows(() => decodeManifest(MFILE, bytes), CheckpointFormatError, "machine.vm.accel");
});

Deno.test("a 1.2 manifest (before fragments[].copies) is read by this dcres as one copy each", () => {
  const got = decodeManifest(MFILE, olderManifest(2));
  assertEquals(got.fragments.map((f) => f.copies), [undefined]);
});

for (
  const [what, copies, expect] of [
    ["not a list", "node2", "is not a list"],
    ["a host that is not a host name", ["../node2"], "copies"],
    ["the writer's own host", ["main"], "names a host twice"],
    ["one host twice", ["node2", "node2"], "names a host twice"],
    ["more than 15 hosts", Array.from({ length: 16 }, (_, i) => `n${i}`), "at most 15"],
  ] as const
) {
  Deno.test(`a checksummed manifest whose fragment copies name ${what} is refused naming the field`, () => {
    const m = manifestFor(FRAG_PAGES, "g000003/main.frag", 7);
    const fragments = [{ ...m.fragments[0], host: "main", copies }];
    const bytes = manifestWithBody(encodeCbor({ ...m, fragments }));
    assertThrows(() => decodeManifest(MFILE, bytes), CheckpointFormatError, expect);
  });
}

Deno.test("a checksummed manifest whose split.mainAddr is not an address is refused naming the field", () => {
  const m = manifestFor(FRAG_PAGES, "g000003/main.frag", 7);
  const split = { mainMemBytes: 4096, hosts: { main: "main" }, mainAddr: 7 };
  const bytes = manifestWithBody(encodeCbor({ ...m, split }));
  assertThrows(() => decodeManifest(MFILE, bytes), CheckpointFormatError, "split.mainAddr");
});

Deno.test("a manifest listing a fragment's copies decodes with them", () => {
  const m = manifestFor(FRAG_PAGES, "g000003/main.frag", 7);
  const fragments = [{ ...m.fragments[0], host: "main", copies: ["node2", "node3"] }];
  const got = decodeManifest(MFILE, manifestWithBody(encodeCbor({ ...m, fragments })));
  assertEquals(got.fragments[0].copies, ["node2", "node3"]);
});

Deno.test("a 1.3 manifest (before addrs and host) is read by this 1.4 dcres without them", () => {
  const got = decodeManifest(MFILE, olderManifest(3));
  assertEquals([got.addrs, got.host], [undefined, undefined]);
});

for (
  const [what, extra, expect] of [
    ["addrs that is a list", { addrs: ["127.0.0.1:1"] }, "is not a map"],
    ["addrs naming a host that is not a host name", { addrs: { "../x": "h:1" } }, "addrs"],
    ["an address that is not text", { addrs: { node2: 7 } }, "addrs.node2"],
    ["an address without a port", { addrs: { node2: "node2" } }, "addrs.node2"],
    ["an address with a newline", { addrs: { node2: "a\nb:1" } }, "addrs.node2"],
    ["an address over 300 characters", { addrs: { node2: `${"a".repeat(300)}:1` } }, "addrs"],
    [
      "more than 64 addresses",
      { addrs: Object.fromEntries(Array.from({ length: 65 }, (_, i) => [`n${i}`, "h:1"])) },
      "more than 64",
    ],
    ["a taker that is not a host name", { host: "node1\nforged" }, `field "host"`],
  ] as const
) {
  Deno.test(`a checksummed manifest with ${what} is refused naming the field`, () => {
    const m = manifestFor(FRAG_PAGES, "g000003/main.frag", 7);
    const bytes = manifestWithBody(encodeCbor({ ...m, ...extra }));
    assertThrows(() => decodeManifest(MFILE, bytes), CheckpointFormatError, expect);
  });
}

Deno.test("a manifest recording its holders' addresses and its taker decodes with them", () => {
  const m = manifestFor(FRAG_PAGES, "g000003/main.frag", 7);
  const addrs = { main: "127.0.0.1:7401", node2: "[::1]:7402", "node3.example": "10.0.0.3:7403" };
  const got = decodeManifest(MFILE, manifestWithBody(encodeCbor({ ...m, addrs, host: "node1" })));
  assertEquals([got.addrs, got.host], [addrs, "node1"]);
});

/** A plain manifest file that says it is version 1.`minor`, its checksum fixed up. */
function olderManifest(minor: number): Uint8Array {
  const bytes = manifestWithBody(encodeCbor(manifestFor(FRAG_PAGES, "g000003/main.frag", 7)));
  const dv = new DataView(bytes.buffer);
  dv.setUint16(10, minor, true);
  rewriteManifestCrc(bytes, dv, bytes.length - MANIFEST_HEADER - 12);
  return bytes;
}

/** A manifest file whose body is `body` (any CBOR), with a valid header and checksum. */
function manifestWithBody(body: Uint8Array): Uint8Array {
  const bytes = new Uint8Array(MANIFEST_HEADER + body.length + 12);
  const dv = new DataView(bytes.buffer);
  bytes.set(new TextEncoder().encode("DCRMANIF"), 0);
  dv.setUint16(8, MANIFEST_VERSION.major, true);
  dv.setUint16(10, MANIFEST_VERSION.minor, true);
  dv.setUint16(12, MANIFEST_VERSION.patch, true);
  dv.setBigUint64(16, BigInt(body.length), true);
  bytes.set(body, MANIFEST_HEADER);
  rewriteManifestCrc(bytes, dv, body.length);
  bytes.set(new TextEncoder().encode("DCRMEND\0"), MANIFEST_HEADER + body.length + 4);
  return bytes;
}

Deno.test("a checksummed manifest whose body is not CBOR is refused at the body", () => {
  const e = refusesManifest(manifestWithBody(Uint8Array.of(0x1f)), 24, "body does not decode");
  assert(e.message.includes("at byte 0"), e.message);
  refusesManifest(manifestWithBody(Uint8Array.of(0x61, 0xff)), 24, "body does not decode");
});

Deno.test("a checksummed manifest lacking a required field is refused naming the field", () => {
  const m: Record<string, unknown> = { ...manifestFor(FRAG_PAGES, "g000001/main.frag", 1) };
  delete m.pageMap;
  refusesManifest(manifestWithBody(encodeCbor(m)), 24, `field "pageMap" is missing`);
  refusesManifest(manifestWithBody(encodeCbor(7)), 24, "body is not a map");
});

Deno.test("a checksummed manifest whose page map names a fragment it does not list is refused", () => {
  const m = {
    ...manifestFor(FRAG_PAGES, "g000001/main.frag", 1),
    pageMap: Uint32Array.of(0, 8, 1),
  };
  refusesManifest(encodeManifest(m), 24, "pageMap run 0 names fragment 1 of 1");
  const ragged = { ...m, pageMap: Uint32Array.of(0, 8) };
  refusesManifest(
    encodeManifest(ragged),
    24,
    `field "pageMap" is missing or not runs of three u32`,
  );
});

Deno.test("a checksummed manifest whose fragments field is null is refused with a format error", () => {
  // decodeManifest checks fields with `=== undefined`, so null passes the presence check and then
  // `m.fragments.length` throws a TypeError.
  const m = { ...manifestFor(FRAG_PAGES, "g000001/main.frag", 1), fragments: null };
  refusesManifest(encodeManifest(m as unknown as Manifest), 24, "fragments");
});

// ---------------------------------------------------------------------------------------------
// The store and the restore-time cross-checks that bind a manifest to its fragments.

/** A store with one committed generation (fragment + manifest); returns the generation dir. */
async function committedStore(
  root: string,
  compress = false,
): Promise<{ dir: string; manifest: Manifest }> {
  const store = new CheckpointStore(root);
  const { dir } = store.begin();
  const footerCrc = await writeFragment(join(dir, "main.frag"), compress);
  const rel = `${dir.slice(root.length + 1)}/main.frag`;
  const manifest = manifestFor(FRAG_PAGES, rel, footerCrc);
  commitManifest(dir, manifest);
  return { dir, manifest };
}

Deno.test("commitManifest leaves exactly the encoded bytes in MANIFEST and no MANIFEST.tmp", () =>
  withTempDir(async (root) => {
    const { dir, manifest } = await committedStore(root);
    assertEquals(Deno.readFileSync(join(dir, "MANIFEST")), encodeManifest(manifest));
    assertThrows(() => Deno.statSync(join(dir, "MANIFEST.tmp")), Deno.errors.NotFound);
    assertEquals(readManifest(dir), manifest);
  }));

Deno.test("an interrupted generation (fragment and MANIFEST.tmp, no MANIFEST) is ignored by readers and removed by the next writer", () =>
  withTempDir(async (root) => {
    const { dir: first } = await committedStore(root);
    const store = new CheckpointStore(root);
    const { generation, dir: broken, release } = store.begin();
    assertEquals(generation, 2);
    await writeFragment(join(broken, "main.frag"), false);
    Deno.writeFileSync(join(broken, "MANIFEST.tmp"), new Uint8Array(10));
    assertEquals(store.generations().map((g) => [g.generation, g.committed]), [[1, true], [
      2,
      false,
    ]]);
    assertEquals(store.latest()?.dir, first);
    assertEquals(OpenCheckpoint.open(root).dir, first);
    // Its writer died (which lets go of its hold on the directory).
    release();
    const next = store.begin();
    assertEquals(next.generation, 2, "the interrupted generation's number is reused");
    assertEquals([...Deno.readDirSync(next.dir)], [], "its files were removed");
  }));

Deno.test("restore opens a committed checkpoint and loads every page as saved", () =>
  withTempDir(async (root) => {
    await committedStore(root, true);
    const ck = OpenCheckpoint.open(root);
    try {
      const dst = new Uint8Array(FRAG_PAGES * PAGE);
      ck.loadTo(Array.from({ length: FRAG_PAGES }, (_, g) => g), dst, addressOf(dst));
      assertEquals(dst, guestMemory().bytes);
      assert(ck.isZero(2) && ck.isZero(5) && !ck.isZero(0));
    } finally {
      ck.close();
    }
  }));

Deno.test("restore refuses a fragment that was replaced by another valid one: the footer CRC binds it", () =>
  withTempDir(async (root) => {
    const { dir } = await committedStore(root);
    const frag = join(dir, "main.frag");
    Deno.removeSync(frag);
    await writeFragment(frag, false, 3, (mem) => mem[7 * PAGE + 100]++); // one byte of gfn 7 differs
    const e = assertThrows(
      () => OpenCheckpoint.open(root),
      CheckpointFormatError,
      "fragment does not belong to this checkpoint",
    ) as CheckpointFormatError;
    assert(e.message.startsWith(`${frag}: at byte ${Deno.statSync(frag).size - 4}: `), e.message);
  }));

Deno.test("restore refuses a page map that does not cover guest memory exactly once", () =>
  withTempDir(async (root) => {
    const { dir, manifest } = await committedStore(root);
    commitManifest(dir, { ...manifest, pageMap: Uint32Array.of(0, 4, 0, 5, 3, 0) });
    assertThrows(
      () => OpenCheckpoint.open(root),
      CheckpointFormatError,
      `${join(dir, "MANIFEST")}: at byte 0: page map does not cover guest memory exactly once`,
    );
  }));

Deno.test("restore refuses a checkpoint whose fragment lacks a page the page map assigns to it, naming the gfn", () =>
  withTempDir(async (root) => {
    const { dir, manifest } = await committedStore(root);
    const machine = machineState(9 * PAGE); // one page more than the fragment holds
    // Named twice, the fragment's 8 pages are enough for either share, so the per-page check is
    // what finds gfn 8 missing (a share larger than its file is refused before, by count).
    const fragments = [manifest.fragments[0], manifest.fragments[0]];
    const pageMap = Uint32Array.of(0, 8, 0, 8, 1, 1);
    commitManifest(dir, { ...manifest, machine, fragments, pageMap });
    assertThrows(
      () => OpenCheckpoint.open(root),
      CheckpointFormatError,
      "page gfn 8 is missing from this fragment, which the manifest says holds it",
    );
  }));

Deno.test("restore refuses a committed generation whose manifest is damaged, naming MANIFEST", () =>
  withTempDir(async (root) => {
    const { dir } = await committedStore(root);
    const file = join(dir, "MANIFEST");
    const bytes = Deno.readFileSync(file);
    bytes[MANIFEST_HEADER + 5] ^= 4;
    Deno.writeFileSync(file, bytes);
    assertThrows(() => OpenCheckpoint.open(root), CheckpointFormatError, `${file}: at byte `);
  }));

Deno.test("restore of part of a checkpoint whose fragment is bad fails with that fragment's error, not a TypeError from the cleanup", () =>
  withTempDir(async (root) => {
    const { dir, manifest } = await committedStore(root);
    // Fragment 0 is another host's (left out by `only`); fragment 1, ours, is not this checkpoint's.
    const ours = {
      ...manifest.fragments[0],
      host: "sub1",
      footerCrc: manifest.fragments[0].footerCrc ^ 1,
    };
    commitManifest(dir, { ...manifest, fragments: [manifest.fragments[0], ours] });
    assertThrows(
      () => OpenCheckpoint.open(root, new Set([1])),
      CheckpointFormatError,
      "fragment does not belong to this checkpoint",
    );
  }));
