import fc from "fast-check";
import { assert, assertEquals, assertThrows } from "./helpers/assert.ts";
import {
  encodeControl,
  encodeFrame,
  type Frame,
  FRAME_HEADER,
  FrameDecoder,
  FrameError,
  FrameKind,
} from "../src/net/frame.ts";
import { parseRequest, RpcError } from "../src/net/rpc_messages.ts";
import { encodeCbor } from "../src/codec/cbor.ts";

Deno.test("frames split at any byte boundaries decode to the frames sent, in order", () => {
  fc.assert(
    fc.property(
      fc.array(
        fc.tuple(
          fc.constantFrom(FrameKind.CONTROL, FrameKind.DATA),
          fc.uint8Array({ maxLength: 300 }),
        ),
        { maxLength: 8 },
      ),
      fc.array(fc.nat(), { maxLength: 10 }),
      (frames, cuts) => {
        const wire = frames.map(([k, p]) => encodeFrame(k, p));
        const all = new Uint8Array(wire.reduce((a, w) => a + w.length, 0));
        let o = 0;
        for (const w of wire) all.set(w, (o += w.length) - w.length);
        const points = [...new Set(cuts.map((c) => c % (all.length + 1)))].sort((a, b) => a - b);
        const d = new FrameDecoder();
        const got: Frame[] = [];
        let prev = 0;
        for (const p of [...points, all.length]) {
          got.push(...d.push(all.subarray(prev, p)));
          prev = p;
        }
        d.end();
        assertEquals(got.map((f) => [f.kind, [...f.payload]]), frames.map(([k, p]) => [k, [...p]]));
      },
    ),
    { numRuns: 300 },
  );
});

Deno.test("thousands of random byte streams only ever yield frames or a FrameError", () => {
  const t0 = performance.now();
  fc.assert(
    fc.property(fc.uint8Array({ maxLength: 200 }), fc.boolean(), (bytes, prefixHeader) => {
      const input = prefixHeader ? new Uint8Array([0x44, 0x52, 1, 1, ...bytes]) : bytes;
      const d = new FrameDecoder();
      try {
        d.push(input);
        d.end();
      } catch (e) {
        assert(e instanceof FrameError, `unexpected ${(e as Error).name}: ${(e as Error).message}`);
      }
    }),
    { numRuns: 5000 },
  );
  assert(performance.now() - t0 < 20_000, "bounded in time");
});

Deno.test("an oversized frame is refused from its header, before its payload arrives", () => {
  const d = new FrameDecoder({ [FrameKind.CONTROL]: 1024, [FrameKind.DATA]: 1024 });
  const header = encodeFrame(FrameKind.CONTROL, new Uint8Array(2048)).subarray(0, FRAME_HEADER);
  const e = assertThrows(() => d.push(header), FrameError);
  assertEquals((e as FrameError).code, "too-large");
});

Deno.test("a stream that ends inside a frame is reported as truncated", () => {
  const d = new FrameDecoder();
  d.push(encodeControl({ v: 1 }).subarray(0, 10));
  assertEquals((assertThrows(() => d.end(), FrameError) as FrameError).code, "truncated");
});

Deno.test("a frame of an unknown version or kind is refused by name", () => {
  const f = encodeControl({ v: 1 });
  f[2] = 9;
  assertThrows(() => new FrameDecoder().push(f), FrameError, "frame version 9 is not supported");
  const g = encodeControl({ v: 1 });
  g[3] = 7;
  assertThrows(() => new FrameDecoder().push(g), FrameError, "unknown frame kind 7");
});

Deno.test("requests are validated field by field; an unknown RPC version is answered with its own code", () => {
  const ok = parseRequest(encodeCbor({ v: 1, id: 3, method: "health", args: {} }));
  assertEquals(ok, { v: 1, id: 3, method: "health", deadlineMs: 30_000, args: {} });
  assertEquals(parseRequest(encodeCbor({ v: 1, cancel: 3 })), { v: 1, cancel: 3 });
  const code = (x: unknown) => {
    try {
      parseRequest(encodeCbor(x));
    } catch (e) {
      assert(e instanceof RpcError);
      return e.code;
    }
    return "accepted";
  };
  assertEquals(code({ v: 2, id: 1, method: "health" }), "unsupported-version");
  assertEquals(code({ v: 1, id: -1, method: "health" }), "bad-request");
  assertEquals(code({ v: 1, id: 1, method: "Bad Name" }), "bad-request");
  assertEquals(code({ v: 1, id: 1, method: "health", deadlineMs: 0 }), "bad-request");
  assertEquals(code([1, 2]), "bad-request");
  fc.assert(
    fc.property(fc.uint8Array({ maxLength: 64 }), (bytes) => {
      try {
        parseRequest(bytes);
      } catch (e) {
        assert(e instanceof RpcError, `unexpected ${(e as Error).name}`);
      }
    }),
    { numRuns: 3000 },
  );
});
