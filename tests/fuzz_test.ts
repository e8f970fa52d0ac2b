/**
 * Fuzzing of every decoder a peer can reach (issue 14, item 7): random bytes and mutated valid
 * encodings never make one throw anything but its own typed error, and no input of at most 1 MiB
 * takes more than 100 ms to refuse. A short pass here; `deno task fuzz` runs the long one. Then the
 * hostile inputs that stalled an agent, each refused by name in bounded time.
 */
import fc from "fast-check";
import { join } from "node:path";
import { assert, assertRejects, assertThrows } from "./helpers/assert.ts";
import {
  feed,
  properties,
  sampleIndex,
  sampleManifest,
  type Target,
  TARGETS,
  TIME_LIMIT_MS,
} from "./helpers/fuzz_targets.ts";
import { CborError, decodeCbor } from "../src/codec/cbor.ts";
import { CheckpointFormatError } from "../src/ckpt/format.ts";
import {
  checkPageMap,
  commitManifest,
  decodeManifest,
  encodeManifest,
} from "../src/ckpt/manifest.ts";
import { FragmentWriter } from "../src/ckpt/fragment_writer.ts";
import { CheckpointStore } from "../src/ckpt/store.ts";
import { OpenCheckpoint } from "../src/ckpt/open_checkpoint.ts";
import { encodeFrame, FrameKind } from "../src/net/frame.ts";
import { FrameReader } from "../src/net/frame_reader.ts";
import { RpcError } from "../src/net/rpc_messages.ts";
import { decodeIndex } from "../src/paging/page_index.ts";
import { PageStoreError } from "../src/paging/page_store.ts";
import { checkRuns } from "../src/memory/runs.ts";
import { PAGE_SIZE } from "../src/accel/accel.ts";

/** Runs per property in CI: enough to reach each decoder's refusals, short enough for every push. */
const RUNS = 100;

for (const t of TARGETS) {
  for (const [name, prop] of properties(t)) {
    Deno.test(`fuzz ${name}: only ${t.typed.map((c) => c.name).join(" or ")}, each within ${TIME_LIMIT_MS} ms`, async () => {
      await fc.assert(prop, { numRuns: RUNS });
    });
  }
}

const target = (name: string): Target => TARGETS.find((t) => t.name === name)!;

/** `fn` refuses within TIME_LIMIT_MS with `cls`, its message naming `what`. */
function refusesQuickly(fn: () => unknown, cls: new (...a: never[]) => Error, what: string) {
  const t0 = performance.now();
  assertThrows(fn, cls, what);
  const ms = performance.now() - t0;
  assert(ms < TIME_LIMIT_MS, `${what}: refused in ${ms.toFixed(1)} ms`);
}

Deno.test("regression: a 256 KiB CBOR bignum (3 minutes before the bound) is refused at once, by size", () => {
  const n = 256 << 10;
  const b = new Uint8Array(6 + n).fill(0xab);
  b.set([0xc2, 0x5a, n >>> 24, (n >> 16) & 255, (n >> 8) & 255, n & 255]);
  refusesQuickly(
    () => decodeCbor(b),
    CborError,
    "bignum of 262144 bytes exceeds the 64-byte limit",
  );
});

Deno.test("regression: 1 MiB of nested arrays and of nested tags is refused by depth", () => {
  for (const head of [0x81, 0x9f, 0xa1, 0xc2]) {
    const b = new Uint8Array(1 << 20).fill(head);
    if (head === 0xa1) { for (let i = 0; i < b.length; i += 2) b[i] = 0x61; // "a": key, then a map
     }
    assertThrows(() => decodeCbor(b), CborError);
    refusesQuickly(() => decodeCbor(b), CborError, "at byte");
  }
  refusesQuickly(
    () => decodeCbor(new Uint8Array(1 << 20).fill(0x81)),
    CborError,
    "nesting too deep",
  );
});

Deno.test("regression: huge declared string, byte-string, array and map lengths are refused before allocating", () => {
  for (const major of [0x7b, 0x5b, 0x9b, 0xbb, 0x7a, 0x9a]) {
    const b = new Uint8Array(1 << 20);
    b.set([major, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]);
    refusesQuickly(() => decodeCbor(b), CborError, "bytes left");
  }
  // A map of n entries needs 2n bytes at least.
  refusesQuickly(() => decodeCbor(Uint8Array.of(0xa2, 0x61, 0x61)), CborError, "map of 2 entries");
});

Deno.test("regression: a 5 KB manifest claiming huge memory is refused before anything per page is made", () => {
  const pages = 2 ** 32 - 1;
  const m = sampleManifest(16 * PAGE_SIZE);
  m.machine.spec.memSize = pages * PAGE_SIZE;
  m.pageMap = Uint32Array.of(0, pages, 0);
  m.fragments[0].pages = pages;
  const bytes = encodeManifest(m);
  assert(bytes.length < 5000, `${bytes.length} bytes`);
  refusesQuickly(
    () => checkPageMap("MANIFEST", decodeManifest("MANIFEST", bytes)),
    CheckpointFormatError,
    "exceeds the 1099511627776-byte limit",
  );
  // Within the limit, the map may not give a fragment more pages than the manifest says it holds.
  const lie = sampleManifest(2 ** 28 * PAGE_SIZE, 16);
  refusesQuickly(
    () => checkPageMap("MANIFEST", decodeManifest("MANIFEST", encodeManifest(lie))),
    CheckpointFormatError,
    "more than the 16 pages it holds",
  );
});

Deno.test("regression: a 1 TiB manifest over a one-page fragment is refused by opening it, not after 2^28 pages of tables", async () => {
  const root = Deno.makeTempDirSync({ prefix: "dcres-fuzz-" });
  try {
    const { dir } = new CheckpointStore(root).begin();
    const raw = new Uint8Array(2 * PAGE_SIZE);
    const addr = BigInt(Deno.UnsafePointer.value(Deno.UnsafePointer.of(raw)));
    const skip = Number((BigInt(PAGE_SIZE) - addr % BigInt(PAGE_SIZE)) % BigInt(PAGE_SIZE));
    const src = { bytes: raw.subarray(skip, skip + PAGE_SIZE), base: addr + BigInt(skip) };
    const w = FragmentWriter.create(join(dir, "main.frag"), {
      checkpointId: new Uint8Array(16),
      generation: 1,
      compress: false,
    });
    await w.append([0], src);
    const sum = await w.finish();
    const m = sampleManifest(2 ** 28 * PAGE_SIZE); // the fragment claims every page; it holds one
    m.fragments[0] = { ...m.fragments[0], footerCrc: sum.footerCrc };
    commitManifest(dir, m);
    refusesQuickly(
      () => OpenCheckpoint.open(root),
      CheckpointFormatError,
      "fragment indexes 1 pages",
    );
  } finally {
    Deno.removeSync(root, { recursive: true });
  }
});

Deno.test("regression: a page-store index whose header claims other pages is refused before its tables are read", () => {
  const idx = sampleIndex(3, 64);
  refusesQuickly(() => decodeIndex("VM.held", idx, 2 ** 28), PageStoreError, "has 64 pages");
  refusesQuickly(
    () => decodeIndex("VM.held", idx.subarray(0, 40), 64),
    PageStoreError,
    "truncated in its",
  );
});

Deno.test("regression: runs naming more pages than the VM has are refused before they are expanded", () => {
  const many = Array.from({ length: 1000 }, () => [0, 2 ** 28]);
  refusesQuickly(
    () => checkRuns(many, 2 ** 28, (why) => new RangeError(why)),
    RangeError,
    "more than the VM's 268435456 pages",
  );
  refusesQuickly(() => checkRuns([[1n, 2n]], 8, (why) => new RangeError(why)), RangeError, "[1,2]");
});

Deno.test("regression: a chunk of 131072 empty frames (stack overflow in push(...)) is read as frames", async () => {
  const one = encodeFrame(FrameKind.DATA, new Uint8Array(0));
  const chunk = new Uint8Array(one.length * 131072);
  for (let i = 0; i < 131072; i++) chunk.set(one, i * one.length);
  const r = new FrameReader(new ReadableStream({ start: (c) => (c.enqueue(chunk), c.close()) }));
  let n = 0;
  while (await r.next()) n++;
  assert(n === 131072, `${n} frames`);
  // As control messages, the first is an empty payload: refused as malformed, by the typed error.
  const r2 = new FrameReader(
    new ReadableStream({
      start: (c) => (c.enqueue(encodeFrame(FrameKind.CONTROL, new Uint8Array(0))), c.close()),
    }),
  );
  await assertRejects(() => r2.message(), RpcError, "malformed message");
});

Deno.test("every hostile regression input also passes the fuzz bound through its target", async () => {
  const n = 256 << 10;
  const big = new Uint8Array(6 + n);
  big.set([0xc2, 0x5a, n >>> 24, (n >> 16) & 255, (n >> 8) & 255, n & 255]);
  await feed(target("cbor"), big);
  await feed(target("cbor"), new Uint8Array(1 << 20).fill(0x81));
  await feed(target("page-runs"), new Uint8Array(1 << 20).fill(0x81));
  await feed(target("hello-messages"), encodeFrame(FrameKind.CONTROL, big));
});
