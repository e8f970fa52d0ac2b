import { assert, assertEquals, assertThrows } from "./helpers/assert.ts";
import { FragmentWriter } from "../src/ckpt/fragment_writer.ts";
import { FragmentReader } from "../src/ckpt/fragment_reader.ts";
import { CheckpointFormatError } from "../src/ckpt/format.ts";
import * as libc from "../src/ffi/libc.ts";
import { PAGE_SIZE as PAGE } from "../src/accel/accel.ts";

/** A page-aligned buffer of `pages` pages: page g holds a pattern of g, every 5th page is zero. */
function memoryImage(pages: number): { bytes: Uint8Array<ArrayBuffer>; base: bigint } {
  const bytes = new Uint8Array(pages * PAGE);
  for (let g = 0; g < pages; g++) {
    if (g % 5 === 0) continue;
    const v = new DataView(bytes.buffer, g * PAGE, PAGE);
    for (let o = 0; o < PAGE; o += 8) v.setUint32(o, g * 7919 + o, true);
  }
  return { bytes, base: libc.ptrValue(Deno.UnsafePointer.of(bytes)) };
}

async function roundTrip(compress: boolean) {
  const dir = Deno.makeTempDirSync();
  const path = `${dir}/f.frag`;
  const src = memoryImage(300);
  const w = FragmentWriter.create(path, {
    checkpointId: new Uint8Array(16).fill(7),
    generation: 3,
    compress,
  });
  const gfns = Array.from({ length: 300 }, (_, i) => (i * 37) % 300); // not in gfn order
  await w.append(gfns.slice(0, 150), src);
  await w.append(gfns.slice(150), src);
  await w.append([42], src); // saved twice: the later copy wins
  const sum = await w.finish();
  assertEquals(sum.pages, 300);
  assertEquals(sum.zeroPages, 60);
  assertEquals(sum.rewrites, 1);
  const r = FragmentReader.open(path);
  assertEquals(r.generation, 3);
  assertEquals(r.pages, 300);
  const dst = new Uint8Array(300 * PAGE).fill(0xee);
  r.readInto(
    Array.from({ length: 300 }, (_, i) => i),
    dst,
    libc.ptrValue(Deno.UnsafePointer.of(dst)),
  );
  assert(dst.every((b, i) => b === src.bytes[i]), "every byte read back equals what was saved");
  r.verifyChunks();
  r.close();
  if (!compress) {
    assertEquals(sum.dataBytes, 240 * PAGE + PAGE, "zero pages are not stored; the rewrite is");
  }
}

Deno.test("a fragment round-trips pages in any order, zero pages unstored, a rewritten page's last copy wins", () =>
  roundTrip(false));
Deno.test("a zstd fragment round-trips the same pages", () => roundTrip(true));

Deno.test("a fragment without a footer (writer killed) is refused by name", async () => {
  const dir = Deno.makeTempDirSync();
  const path = `${dir}/f.frag`;
  const w = FragmentWriter.create(path, { checkpointId: new Uint8Array(16), generation: 1 });
  await w.append([1, 2, 3], memoryImage(4));
  await w.flush();
  const e = assertThrows(() => FragmentReader.open(path), CheckpointFormatError);
  assert(e.message.startsWith(`${path}: at byte `), e.message);
  assert(/footer|truncated/.test(e.message), e.message);
});

Deno.test("two appends at once (a round and a page-out's save on a split VM's main) leave no empty chunk and lose no write", async () => {
  const dir = Deno.makeTempDirSync();
  const path = `${dir}/f.frag`;
  const pages = 6 * 1024;
  const src = memoryImage(pages);
  const w = FragmentWriter.create(path, { checkpointId: new Uint8Array(16), generation: 1 });
  // Every other non-zero page: one iovec each, so 1024 of them fill a chunk.
  const sparse = Array.from({ length: pages / 2 }, (_, i) => 2 * i + 1).filter((g) => g % 5);
  const [first, a, b] = [sparse.slice(0, 1024), sparse.slice(1024, 2048), sparse.slice(2048)];
  await w.append(first, src); // its chunk is being written when the next two come
  // The second waits for that write with a full chunk; the third finds the chunk still full and
  // waits too. Once the write lands the second submits every pending page, and the third used to
  // submit an empty chunk after it and drop the second's write from what it waited for.
  await Promise.all([w.append(a, src), w.append(b, src)]);
  const sum = await w.finish();
  assertEquals(sum.pages, sparse.length);
  const r = FragmentReader.open(path);
  const dst = new Uint8Array(pages * PAGE);
  const idx = sparse.map((_, i) => i); // readInto takes page positions; sparse is ascending
  r.readInto(idx, dst, libc.ptrValue(Deno.UnsafePointer.of(dst)));
  for (const g of sparse) {
    const at = g * PAGE;
    assert(dst.subarray(at, at + PAGE).every((x, i) => x === src.bytes[at + i]), `page ${g}`);
  }
  r.verifyChunks();
  r.close();
  Deno.removeSync(dir, { recursive: true });
});
