/**
 * The decoders a peer can reach, each with the one error type it may throw and inputs to feed it:
 * random bytes, and valid encodings with mutated lengths, tags and counts. tests/fuzz_test.ts runs
 * a short pass in CI and scripts/fuzz.ts (`deno task fuzz`) a long one over the same properties.
 */
import fc from "fast-check";
import { CborError, decodeCbor, encodeCbor } from "../../src/codec/cbor.ts";
import { crc32 } from "../../src/ckpt/format.ts";
import {
  checkPageMap,
  decodeManifest,
  encodeManifest,
  type Manifest,
} from "../../src/ckpt/manifest.ts";
import { CheckpointFormatError } from "../../src/ckpt/format.ts";
import {
  encodeControl,
  encodeFrame,
  FrameDecoder,
  FrameError,
  FrameKind,
} from "../../src/net/frame.ts";
import { FrameReader } from "../../src/net/frame_reader.ts";
import { parseRequest, RpcError } from "../../src/net/rpc_messages.ts";
import {
  decodeIndex,
  PageStoreError,
  STORE_MAGIC,
  STORE_VERSION,
} from "../../src/paging/page_index.ts";
import { decodeLazyRecord, encodeLazyRecord } from "../../src/paging/lazy_record.ts";
import {
  decodePageReply,
  decodePageRequest,
  encodePageReply,
  encodePageRequest,
  PageOp,
  PageWireError,
} from "../../src/paging/wire.ts";
import { checkRuns } from "../../src/memory/runs.ts";
import { BadPlanError, checkPlan } from "../../src/agent/plan_reply.ts";
import { PAGE_SIZE } from "../../src/accel/accel.ts";

/** Longest time one input of at most 1 MiB may take to decode or be refused. */
export const TIME_LIMIT_MS = 100;
/** Largest input fed. */
export const MAX_INPUT = 1 << 20;

/** One decoder under fuzz. */
export interface Target {
  /** Name, for messages and `--only`. */
  name: string;
  /** Decodes `bytes` (returns or throws). */
  decode(bytes: Uint8Array): unknown;
  /** The decoder's own typed errors. */
  typed: Array<new (...a: never[]) => Error>;
  /** Valid encodings, before mutation. */
  valid: fc.Arbitrary<Uint8Array>;
  /**
   * Time allowed per item of an accepted input (a number `decode` returns), beyond TIME_LIMIT_MS:
   * a stream of valid frames is work handed to its handler frame by frame, not a refusal.
   */
  perItemMs?: number;
}

/** Pages of the VM the page-channel and page-store targets decode for. */
const VM_PAGES = 4096;

/** A manifest the decoder accepts, around `memSize` bytes of guest memory in one fragment. */
export function sampleManifest(
  memSize = 16 * PAGE_SIZE,
  fragmentPages = memSize / PAGE_SIZE,
): Manifest {
  const pages = memSize / PAGE_SIZE;
  return {
    dcresVersion: "0.1.0",
    id: "00112233445566778899aabbccddeeff",
    vm: "vm1",
    generation: 1,
    parent: null,
    createdAt: new Date(0).toISOString(),
    mode: "stop",
    compressed: false,
    machine: {
      spec: { name: "vm1", guest: "memstamp", memSize, vcpus: 1 },
      vm: { accel: "kvm", vcpus: [{ rip: 0xfff0n, rsp: 2n ** 63n, xsave: new Uint8Array(64) }] },
    } as unknown as Manifest["machine"],
    fragments: [{
      path: "g000001/main.frag",
      host: "main",
      generation: 1,
      footerCrc: 0x12345678,
      pages: fragmentPages,
      bytes: 4096,
    }],
    pageMap: Uint32Array.of(0, pages, 0),
    prefetchOrder: Uint32Array.from({ length: Math.min(pages, 64) }, (_, i) => i),
    stats: {
      pagesSaved: pages,
      zeroPages: 0,
      pagesReused: 0,
      pagesSavedTwice: 0,
      bytesWritten: memSize,
      rounds: 1,
      downtimeMs: 1,
      totalMs: 2,
    },
  };
}

/** Manifests with their sizes and counts changed, re-encoded whole so the checksum holds. */
const mutatedManifest: fc.Arbitrary<Uint8Array> = fc.record({
  memPages: fc.oneof(fc.nat(64), fc.constantFrom(2 ** 28, 2 ** 28 + 1, 2 ** 32 - 1, 2 ** 40)),
  fragPages: fc.oneof(fc.nat(64), fc.constantFrom(2 ** 28, 2 ** 32 - 1)),
  map: fc.array(fc.nat({ max: 2 ** 32 - 1 }), { maxLength: 12 }),
  useMap: fc.boolean(),
}).map(({ memPages, fragPages, map, useMap }) => {
  const m = sampleManifest(memPages * PAGE_SIZE, fragPages);
  if (useMap) m.pageMap = Uint32Array.from(map.slice(0, map.length - (map.length % 3)));
  return encodeManifest(m);
});

/** Valid page-store index bytes of a VM of VM_PAGES pages, some held. */
export function sampleIndex(heldEvery = 3, pages = VM_PAGES): Uint8Array {
  const bitmap = Math.ceil(pages / 8);
  const crcsAt = 32 + Math.ceil(bitmap / 8) * 8;
  const out = new Uint8Array(crcsAt + pages * 4);
  out.set(STORE_MAGIC, 0);
  const dv = new DataView(out.buffer);
  dv.setUint16(8, STORE_VERSION.major, true);
  dv.setUint16(10, STORE_VERSION.minor, true);
  dv.setUint32(12, pages, true);
  for (let g = 0; g < pages; g += heldEvery) out[32 + (g >> 3)] |= 1 << (g & 7);
  dv.setUint32(16, crc32(out.subarray(32, 32 + bitmap)), true);
  dv.setUint32(20, crc32(out.subarray(0, 20)), true);
  return out;
}

/** Re-seals an index's header checksum, so a mutation of its counts gets past it. */
function resealIndex(b: Uint8Array): Uint8Array {
  if (b.length >= 24) {
    new DataView(b.buffer, b.byteOffset).setUint32(20, crc32(b.subarray(0, 20)), true);
  }
  return b;
}

/** Bytes of a ReadableStream, in chunks of `chunk`. */
function streamOf(bytes: Uint8Array, chunk: number): ReadableStream<Uint8Array> {
  let at = 0;
  return new ReadableStream({
    pull(c) {
      if (at >= bytes.length) return c.close();
      c.enqueue(bytes.subarray(at, at += chunk));
    },
  });
}

/** Reads every control message off `bytes` through FrameReader (the hello and RPC path). */
async function readMessages(bytes: Uint8Array): Promise<number> {
  const r = new FrameReader(streamOf(bytes, 1 << 16));
  let n = 0;
  while (await r.message()) n++;
  return n;
}

/** `ckpt.plan` answers as an agent encodes them: one-host or split, with copies and addresses. */
const planArb: fc.Arbitrary<Uint8Array> = fc.record({
  hosts: fc.integer({ min: 1, max: 5 }),
  generations: fc.integer({ min: 1, max: 9 }),
  split: fc.boolean(),
  copies: fc.boolean(),
}).map(({ hosts, generations, split, copies }) => {
  const names = Array.from({ length: hosts }, (_, i) => `node${i + 1}`);
  const addrs = Object.fromEntries(names.map((n, i) => [n, `127.0.0.${i + 2}:7400`]));
  const fragments = Array.from({ length: generations }).flatMap((_, g) =>
    names.map((host, i) => ({
      path: `g00000${g + 1}/${host}.frag`,
      host,
      bytes: 4096 * (i + g + 1) + 64,
      ...(copies && hosts > 1 ? { copies: [names[(i + 1) % hosts]] } : {}),
    }))
  );
  return encodeCbor({
    store: "vm1",
    inStore: true,
    generation: `g00000${generations}`,
    next: generations + 1,
    id: "00112233445566778899aabbccddeeff",
    vm: "vm1",
    memSize: 64 * PAGE_SIZE,
    fragments,
    host: "node1",
    addrs,
    taker: "node1",
    ...(split
      ? {
        split: {
          mainMemBytes: 16 * PAGE_SIZE,
          hosts: { ...addrs, node1: "main" },
          mainAddr: addrs.node1,
        },
      }
      : {}),
  });
});

const gfnsArb = fc.array(fc.nat({ max: VM_PAGES - 1 }), { maxLength: 8 }).map((a) =>
  Uint32Array.from(a)
);

/** Every target, synchronous ones first; `readMessages` is the one that returns a promise. */
export const TARGETS: Target[] = [
  {
    name: "cbor",
    decode: decodeCbor,
    typed: [CborError],
    valid: fc.anything({ maxDepth: 3, withBigInt: true, withTypedArray: true, withMap: false })
      .map((v) => {
        try {
          return encodeCbor(v);
        } catch {
          return encodeCbor(null);
        }
      }),
  },
  {
    name: "frame",
    decode: (b) => {
      const d = new FrameDecoder();
      const frames = d.push(b);
      d.end();
      return frames;
    },
    typed: [FrameError],
    valid: fc.array(
      fc.tuple(
        fc.constantFrom(FrameKind.CONTROL, FrameKind.DATA),
        fc.uint8Array({ maxLength: 64 }),
      ),
      { minLength: 1, maxLength: 4 },
    ).map((fs) => concat(fs.map(([k, p]) => encodeFrame(k, p)))),
  },
  {
    name: "frame-reader",
    decode: async (b) => {
      const r = new FrameReader(streamOf(b, 1 << 16));
      let n = 0;
      try {
        while (await r.next()) n++;
      } catch (e) {
        throw Object.assign(e as Error, { items: n });
      }
      return n;
    },
    typed: [FrameError],
    // Each valid frame is one await for its consumer, about 9 µs on a loaded 2-core host.
    perItemMs: 0.015,
    valid: fc.tuple(
      fc.uint8Array({ maxLength: 16 }),
      fc.oneof({ weight: 19, arbitrary: fc.nat(256) }, {
        weight: 1,
        arbitrary: fc.constant(1 << 16),
      }),
    ).map(([p, n]) => concat(Array.from({ length: n }, () => encodeFrame(FrameKind.DATA, p)))),
  },
  {
    name: "rpc-envelope",
    decode: parseRequest,
    typed: [RpcError],
    valid: fc.oneof(
      fc.record({
        v: fc.constantFrom(1, 2),
        id: fc.oneof(fc.nat(), fc.constant(-1)),
        method: fc.constantFrom("health", "vm.list", "pages.open", "X", ""),
        deadlineMs: fc.oneof(fc.nat(), fc.constant(1e12)),
        args: fc.oneof(fc.dictionary(fc.string(), fc.nat()), fc.constant([])),
      }),
      fc.record({ v: fc.constant(1), cancel: fc.oneof(fc.nat(), fc.string()) }),
      fc.record({ v: fc.constant(1), eod: fc.oneof(fc.nat(), fc.bigInt()) }),
    ).map((m) => encodeCbor(m)),
  },
  {
    name: "hello-messages",
    decode: readMessages,
    typed: [FrameError, RpcError],
    valid: fc.array(
      fc.oneof(
        fc.constant({ v: 1, hello: 1 }),
        fc.uint8Array({ maxLength: 32 }).map((challenge) => ({ v: 1, challenge })),
        fc.record({ v: fc.constant(1), cert: fc.string(), sig: fc.uint8Array({ maxLength: 64 }) }),
        fc.record({ v: fc.constant(1), ok: fc.boolean(), host: fc.string() }),
      ),
      { minLength: 1, maxLength: 3 },
    ).map((ms) => concat(ms.map((m) => encodeControl(m)))),
  },
  {
    name: "manifest",
    decode: (b) => checkPageMap("MANIFEST", decodeManifest("MANIFEST", b)),
    typed: [CheckpointFormatError],
    valid: fc.oneof(fc.constant(encodeManifest(sampleManifest())), mutatedManifest),
  },
  {
    name: "plan-reply",
    decode: (b) => checkPlan("127.0.0.3:7400", decodeCbor(b)),
    typed: [CborError, BadPlanError],
    valid: planArb,
  },
  {
    name: "page-store-index",
    decode: (b) => decodeIndex("VM.held", b, VM_PAGES),
    typed: [PageStoreError],
    valid: fc.integer({ min: 1, max: 9 }).map((k) => sampleIndex(k)),
  },
  {
    name: "lazy-load-record",
    decode: (b) => decodeLazyRecord("VM.lazy", b, 1 << 28),
    typed: [PageStoreError],
    valid: fc.tuple(fc.integer({ min: 1, max: 4 * VM_PAGES }), fc.uint8Array({ maxLength: 200 }))
      .map(([pages, source]) =>
        encodeLazyRecord({
          pages,
          pending: new Uint8Array(Math.ceil(pages / 8)).fill(0x5a),
          source,
        })
      ),
  },
  {
    name: "page-request",
    decode: (b) => decodePageRequest(b, VM_PAGES),
    typed: [PageWireError],
    valid: fc.tuple(fc.constantFrom(PageOp.GET, PageOp.PUT, PageOp.RELEASE), fc.nat(), gfnsArb).map(
      ([op, seq, gfns]) =>
        encodePageRequest({
          op,
          seq: seq >>> 0,
          gfns,
          data: op === PageOp.PUT ? new Uint8Array(gfns.length * PAGE_SIZE) : undefined,
        }),
    ),
  },
  {
    name: "page-reply",
    decode: decodePageReply,
    typed: [PageWireError],
    valid: fc.tuple(fc.nat(2), fc.oneof(fc.string(), fc.constant(undefined))).map(([n, error]) =>
      encodePageReply({ op: PageOp.GET, seq: 7, data: new Uint8Array(n * PAGE_SIZE), error })
    ),
  },
  {
    name: "page-runs",
    decode: (b) => checkRuns(decodeCbor(b), VM_PAGES, (why) => new RangeError(why)),
    typed: [CborError, RangeError],
    valid: fc.array(fc.tuple(fc.integer({ min: -2, max: VM_PAGES + 2 }), fc.nat(2 ** 33)), {
      maxLength: 6,
    }).map((runs) => encodeCbor(runs)),
  },
];

/** Joins byte arrays. */
export function concat(parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) out.set(p, (at += p.length) - p.length);
  return out;
}

/** A mutation of a valid encoding: bytes overwritten (often with length or tag heads), cut or grown. */
const mutation = fc.record({
  edits: fc.array(
    fc.tuple(
      fc.nat(),
      fc.oneof(
        fc.nat(255),
        // CBOR heads with the largest arguments, and 0xff runs for 32-bit counts and lengths.
        fc.constantFrom(
          0x1b,
          0x3b,
          0x5a,
          0x5b,
          0x7a,
          0x7b,
          0x9a,
          0x9b,
          0xba,
          0xbb,
          0xc2,
          0xc3,
          0xff,
        ),
      ),
    ),
    { minLength: 1, maxLength: 4 },
  ),
  cut: fc.option(fc.nat(), { nil: undefined }),
  reseal: fc.boolean(),
});

/** Near-valid inputs of `t`: valid encodings with a few bytes changed, then maybe cut short. */
export function nearValid(t: Target): fc.Arbitrary<Uint8Array> {
  return fc.tuple(t.valid, mutation).map(([v, { edits, cut, reseal }]) => {
    const b = v.slice();
    for (const [at, x] of edits) if (b.length) b[at % b.length] = x;
    const out = cut === undefined ? b : b.subarray(0, cut % (b.length + 1));
    return reseal && t.name === "page-store-index" ? resealIndex(out) : out;
  });
}

/** Random bytes, short ones byte by byte and long ones (up to MAX_INPUT) as a repeated pattern. */
export const randomBytes: fc.Arbitrary<Uint8Array> = fc.oneof(
  { weight: 9, arbitrary: fc.uint8Array({ maxLength: 256 }) },
  {
    weight: 1,
    arbitrary: fc.tuple(fc.uint8Array({ minLength: 1, maxLength: 16 }), fc.nat(MAX_INPUT)).map(
      ([pattern, size]) => {
        const out = new Uint8Array(size);
        for (let i = 0; i < size; i++) out[i] = pattern[i % pattern.length];
        return out;
      },
    ),
  },
);

/**
 * Feeds `bytes` to `t`: passes if it decodes or throws one of `t`'s typed errors, within
 * TIME_LIMIT_MS. A slow input is timed a second time before it fails, so one GC pause or a busy
 * neighbour does not fail the bound; a slow decoder is slow both times.
 */
export async function feed(t: Target, bytes: Uint8Array): Promise<void> {
  for (let attempt = 0;; attempt++) {
    const t0 = performance.now();
    let allowed = TIME_LIMIT_MS;
    try {
      const out = await t.decode(bytes);
      if (typeof out === "number") allowed += out * (t.perItemMs ?? 0);
    } catch (e) {
      allowed += ((e as { items?: number }).items ?? 0) * (t.perItemMs ?? 0);
      if (!t.typed.some((c) => e instanceof c)) {
        throw new Error(
          `${t.name}: threw ${(e as Error)?.name} (${(e as Error)?.message}) on ${describe(bytes)}`,
        );
      }
      const msg = (e as Error).message;
      if (msg.includes("\n")) throw new Error(`${t.name}: a refusal of two lines: ${msg}`);
    }
    const ms = performance.now() - t0;
    if (ms <= allowed) return;
    if (attempt > 0) {
      throw new Error(
        `${t.name}: took ${ms.toFixed(1)} ms (> ${allowed.toFixed(1)}) on ${describe(bytes)}`,
      );
    }
  }
}

/** A short description of an input: its length and first bytes. */
export function describe(b: Uint8Array): string {
  const head = [...b.subarray(0, 32)].map((x) => x.toString(16).padStart(2, "0")).join(" ");
  return `${b.length} bytes: ${head}${b.length > 32 ? " ..." : ""}`;
}

/** The two properties of a target: random bytes, and near-valid inputs. */
export function properties(t: Target): Array<[string, fc.IAsyncProperty<[Uint8Array]>]> {
  return [
    [`${t.name}: random bytes`, fc.asyncProperty(randomBytes, (b) => feed(t, b))],
    [`${t.name}: near-valid inputs`, fc.asyncProperty(nearValid(t), (b) => feed(t, b))],
  ];
}
