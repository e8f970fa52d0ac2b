/**
 * Each way a fragment file can be bad (docs/FORMAT.md), by name: every refusal names the file and
 * the byte.
 */
import zlib from "node:zlib";
import { join } from "node:path";
import { assert, assertEquals, assertThrows } from "./helpers/assert.ts";
import { CheckpointFormatError, crc32, FRAGMENT_VERSION } from "../src/ckpt/format.ts";
import { PAGE_SIZE as PAGE } from "../src/accel/accel.ts";
import { FragmentWriter } from "../src/ckpt/fragment_writer.ts";
import { FragmentReader } from "../src/ckpt/fragment_reader.ts";
import {
  chunkEntry,
  fragmentFooter,
  HEADER_CRC_OFFSET,
  HEADER_SIZE,
  pageEntry,
} from "../src/ckpt/fragment_layout.ts";
import {
  addressOf,
  CHECKPOINT_ID,
  FOOTER,
  readFragment,
  withTempDir,
  writeFragment,
} from "./helpers/ckpt_fixture.ts";

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
