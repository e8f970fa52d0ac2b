import fc from "fast-check";
import { join } from "node:path";
import { assert, assertEquals, assertThrows } from "./helpers/assert.ts";
import { MAIN, OwnershipError, PageOwnership } from "../src/paging/ownership.ts";
import {
  decodePageReply,
  decodePageRequest,
  encodePageReply,
  encodePageRequest,
  MAX_BATCH,
  PageOp,
  PageWireError,
} from "../src/paging/wire.ts";
import { PageStoreError, PageStores, VmPageStore } from "../src/paging/page_store.ts";
import { PAGE_SIZE } from "../src/accel/accel.ts";
import { pagesOf, withDir } from "./helpers/page_fixture.ts";

Deno.test("a new holder table places every page where told and counts each host's pages", () => {
  const o = new PageOwnership(10, 3, (g) => g % 3);
  for (let g = 0; g < 10; g++) assertEquals(o.holderOf(g), g % 3);
  assertEquals(o.counts(), [4, 3, 3]);
  assertEquals(o.check(), { counts: [4, 3, 3], moving: 0 });
  assertThrows(() => new PageOwnership(4, 2, () => 2), OwnershipError, "no host 2");
  assertThrows(() => new PageOwnership(4, 0, () => 0), OwnershipError, "0 hosts");
});

Deno.test("a page-in hands a sub-host's page to main only when it ends", () => {
  const o = new PageOwnership(4, 3, (g) => (g < 2 ? MAIN : 2));
  o.beginIn(3);
  assert(o.isMoving(3) && !o.isMovingOut(3));
  assertEquals(o.holderOf(3), 2, "the old holder keeps it during the move");
  assertEquals(o.check(), { counts: [2, 0, 2], moving: 1 });
  o.endIn(3);
  assertEquals(o.holderOf(3), MAIN);
  assert(!o.isMoving(3));
  assertEquals(o.counts(), [3, 0, 1]);
  assertEquals(o.check(), { counts: [3, 0, 1], moving: 0 });
});

Deno.test("a page-out hands a main page to its target sub-host only when it ends", () => {
  const o = new PageOwnership(4, 3, () => MAIN);
  o.beginOut(1, 2);
  assert(o.isMoving(1) && o.isMovingOut(1));
  assertEquals(o.outTarget(1), 2);
  assertEquals(o.holderOf(1), MAIN);
  assertEquals(o.check(), { counts: [4, 0, 0], moving: 1 });
  o.endOut(1);
  assertEquals(o.holderOf(1), 2);
  assertEquals(o.check(), { counts: [3, 0, 1], moving: 0 });
});

Deno.test("an aborted page-in or page-out leaves the page with its holder", () => {
  const o = new PageOwnership(2, 2, (g) => g);
  o.beginOut(0, 1);
  o.beginIn(1);
  assertEquals(o.check().moving, 2);
  o.abort(0);
  o.abort(1);
  assertEquals([o.holderOf(0), o.holderOf(1)], [MAIN, 1]);
  assertEquals(o.check(), { counts: [1, 1], moving: 0 });
  o.beginIn(1); // both pages are idle again: they can move
  o.endIn(1);
  assertEquals(o.counts(), [2, 0]);
});

Deno.test("every transition that would give a page two holders or none is refused", () => {
  const o = new PageOwnership(6, 3, (g) => (g < 3 ? MAIN : 1));
  assertThrows(() => o.beginIn(0), OwnershipError, "main already holds it");
  assertThrows(() => o.beginOut(3, 2), OwnershipError, "main does not hold it (host 1 does)");
  assertThrows(() => o.beginOut(0, MAIN), OwnershipError, "no sub-host 0");
  assertThrows(() => o.beginOut(0, 3), OwnershipError, "no sub-host 3");
  assertThrows(() => o.beginIn(6), OwnershipError, "no gfn 6");
  assertThrows(() => o.beginOut(-1, 1), OwnershipError, "no gfn -1");
  o.beginOut(1, 2);
  assertThrows(() => o.beginOut(1, 2), OwnershipError, "already moving");
  o.beginIn(4);
  assertThrows(() => o.beginIn(4), OwnershipError, "already moving");
  assertThrows(() => o.endIn(5), OwnershipError, "no such move");
  assertThrows(() => o.endIn(1), OwnershipError, "no such move");
  assertThrows(() => o.endOut(4), OwnershipError, "no such move");
  assertThrows(() => o.endOut(2), OwnershipError, "no such move");
  assertThrows(() => o.outTarget(4), OwnershipError, "no such move");
  assertThrows(() => o.abort(0), OwnershipError, "not moving");
  for (const g of [-1, 6, 1.5]) assertThrows(() => o.abort(g), OwnershipError, "no gfn");
  // Nothing refused changed the table.
  assertEquals(o.check(), { counts: [3, 3, 0], moving: 2 });
  for (let g = 0; g < 6; g++) assertEquals(o.holderOf(g), g < 3 ? MAIN : 1);
});

Deno.test("a page-in and a page-out of the same page cannot both be under way", () => {
  const o = new PageOwnership(2, 2, (g) => g);
  o.beginOut(0, 1);
  assertThrows(() => o.beginIn(0), OwnershipError, "already moving");
  o.endOut(0);
  o.beginIn(0);
  assertThrows(() => o.beginOut(0, 1), OwnershipError, "already moving");
  assertThrows(() => o.endOut(0), OwnershipError, "no such move");
});

const KINDS = ["beginIn", "endIn", "beginOut", "endOut", "abort"] as const;

Deno.test("random sequences of moves keep one holder per page, as a simple model predicts", () => {
  const op = fc.tuple(fc.constantFrom(...KINDS), fc.nat(), fc.nat());
  const inits = fc.array(fc.nat(), { minLength: 1, maxLength: 12 });
  const seqs = fc.array(op, { maxLength: 80 });
  fc.assert(
    fc.property(fc.integer({ min: 1, max: 5 }), inits, seqs, (hosts, init, ops) => {
      const holders = init.map((h) => h % hosts); // the model
      const o = new PageOwnership(holders.length, hosts, (g) => holders[g]);
      const moving: Array<"none" | "in" | "out"> = holders.map(() => "none");
      const target = holders.map(() => -1);
      for (const [kind, g, t] of ops) {
        const gfn = g % holders.length, to = t % (hosts + 1); // `to` may name no host
        const idle = moving[gfn] === "none";
        const legal = {
          beginIn: idle && holders[gfn] !== MAIN,
          endIn: moving[gfn] === "in",
          beginOut: idle && holders[gfn] === MAIN && to > MAIN && to < hosts,
          endOut: moving[gfn] === "out",
          abort: !idle,
        }[kind];
        const run = () => (kind === "beginOut" ? o.beginOut(gfn, to) : o[kind](gfn));
        if (!legal) {
          assertThrows(run, OwnershipError);
        } else {
          run();
          if (kind === "beginIn") moving[gfn] = "in";
          else if (kind === "beginOut") [moving[gfn], target[gfn]] = ["out", to];
          else if (kind === "abort") moving[gfn] = "none";
          else {
            holders[gfn] = kind === "endIn" ? MAIN : target[gfn];
            moving[gfn] = "none";
          }
        }
        const expected = new Array(hosts).fill(0);
        for (const h of holders) expected[h]++;
        const movingNow = moving.filter((m) => m !== "none").length;
        assertEquals(o.check(), { counts: expected, moving: movingNow });
        assertEquals(o.counts(), expected);
        for (let p = 0; p < holders.length; p++) {
          assertEquals(o.holderOf(p), holders[p], `holder of ${p} after ${kind}(${gfn})`);
          assertEquals(o.isMovingOut(p), moving[p] === "out");
          if (moving[p] === "out") assertEquals(o.outTarget(p), target[p]);
        }
      }
    }),
    { numRuns: 400 },
  );
});

Deno.test("GET, PUT and RELEASE requests decode to what was encoded", () => {
  const gfns = new Uint32Array([5, 6, 7, 20]);
  for (const op of [PageOp.GET, PageOp.RELEASE]) {
    const r = decodePageRequest(encodePageRequest({ op, seq: 0xfffffffe, gfns }), 21);
    assertEquals([r.op, r.seq, [...r.gfns], r.data], [op, 0xfffffffe, [5, 6, 7, 20], undefined]);
  }
  const data = pagesOf([1, 2, 3, 4]);
  const wire = encodePageRequest({ op: PageOp.PUT, seq: 7, gfns, data });
  assertEquals(wire.length, 16 + 4 * 4 + 4 * PAGE_SIZE);
  const r = decodePageRequest(wire, 21);
  assertEquals([r.op, r.seq, [...r.gfns]], [PageOp.PUT, 7, [5, 6, 7, 20]]);
  assertEquals(r.data, data);
});

Deno.test("data, acknowledgement and error replies decode to what was encoded", () => {
  const data = pagesOf([9, 8]);
  const r = decodePageReply(encodePageReply({ op: PageOp.GET, seq: 3, data }));
  assertEquals([r.op, r.seq, r.error], [PageOp.GET, 3, undefined]);
  assertEquals(r.data, data);
  const ack = decodePageReply(encodePageReply({ op: PageOp.PUT, seq: 4 }));
  assertEquals(ack, { op: PageOp.PUT, seq: 4, data: undefined });
  const err = decodePageReply(
    encodePageReply({ op: PageOp.GET, seq: 5, error: "h2: gfn 9 is not held — sorry" }),
  );
  assertEquals(err, { op: PageOp.GET, seq: 5, error: "h2: gfn 9 is not held — sorry" });
});

Deno.test("malformed page requests are refused with a PageWireError saying why", () => {
  const gfns = new Uint32Array([1, 2]);
  const good = encodePageRequest({ op: PageOp.GET, seq: 1, gfns });
  decodePageRequest(good, 3);
  assertThrows(() => decodePageRequest(good.subarray(0, 15), 3), PageWireError, "too short");
  const badOp = good.slice();
  badOp[0] = 4;
  assertThrows(() => decodePageRequest(badOp, 3), PageWireError, "unknown page operation 4");
  const tooMany = good.slice();
  new DataView(tooMany.buffer).setUint32(8, MAX_BATCH + 1, true);
  assertThrows(() => decodePageRequest(tooMany, 3), PageWireError, `exceeds ${MAX_BATCH}`);
  assertThrows(() => decodePageRequest(good.subarray(0, 20), 3), PageWireError, "does not match");
  const longer = new Uint8Array(good.length + 1);
  longer.set(good);
  assertThrows(() => decodePageRequest(longer, 3), PageWireError, "does not match");
  const put = encodePageRequest({ op: PageOp.PUT, seq: 1, gfns, data: pagesOf([1, 2]) });
  assertThrows(() => decodePageRequest(put.subarray(0, put.length - 1), 3), PageWireError);
  assertThrows(() => decodePageRequest(good, 2), PageWireError, "gfn 2 is outside");
});

Deno.test("a reply whose length disagrees with its page count, or a short PUT, is refused", () => {
  const reply = encodePageReply({ op: PageOp.GET, seq: 1, data: pagesOf([1]) });
  assertThrows(() => decodePageReply(reply.subarray(0, reply.length - 1)), PageWireError);
  assertThrows(() => decodePageReply(reply.subarray(0, 10)), PageWireError, "too short");
  const gfns = new Uint32Array([1, 2]);
  assertThrows(
    () => encodePageRequest({ op: PageOp.PUT, seq: 1, gfns, data: pagesOf([1]) }),
    PageWireError,
    "needs 8192 bytes",
  );
  assertThrows(() => encodePageRequest({ op: PageOp.PUT, seq: 1, gfns }), PageWireError);
});

Deno.test("zero pages read back as zeros and pages put read back as put, in any order", () => {
  withDir((dir) => {
    const s = VmPageStore.open(dir, "vm", 32);
    try {
      s.put([5, 6, 7, 20], pagesOf([5, 6, 7, 20]));
      s.holdZero([8, 30]);
      assertEquals(s.heldPages, 6);
      assert(s.holds(30) && s.holds(20) && !s.holds(4) && !s.holds(21));
      assertEquals(s.get([30, 8]), new Uint8Array(2 * PAGE_SIZE));
      assertEquals(s.get([5, 6, 7, 20]), pagesOf([5, 6, 7, 20]));
      assertEquals(s.get([20, 7, 5]), pagesOf([20, 7, 5]));
      s.put([6], pagesOf([99]));
      assertEquals(s.get([5, 6, 7, 8]).subarray(0, 3 * PAGE_SIZE), pagesOf([5, 99, 7]));
      assertEquals(s.heldPages, 6, "re-putting a held page does not count it twice");
    } finally {
      s.close();
    }
  });
});

Deno.test("a page not held is refused by gfn, never served as zeros, also once released", () => {
  withDir((dir) => {
    const s = VmPageStore.open(dir, "vm-a", 32);
    try {
      s.put([5, 6], pagesOf([5, 6]));
      assertThrows(() => s.get([5, 9]), PageStoreError, "vm-a: gfn 9 is not held");
      s.release([5]);
      assertEquals(s.heldPages, 1);
      assert(!s.holds(5));
      assertThrows(() => s.get([5]), PageStoreError, "gfn 5 is not held");
      assertEquals(s.get([6]), pagesOf([6]));
    } finally {
      s.close();
    }
  });
});

Deno.test("held pages and their contents survive closing and reopening the store", () => {
  withDir((dir) => {
    const a = VmPageStore.open(dir, "vm", 40);
    a.put([5, 6, 7, 20], pagesOf([5, 6, 7, 20]));
    a.holdZero([33]);
    a.release([6]);
    const bits = a.bitmap();
    a.close();
    const b = VmPageStore.open(dir, "vm", 40);
    try {
      assertEquals(b.heldPages, 4);
      assertEquals(b.bitmap(), bits);
      const expected = new Uint8Array(4 * PAGE_SIZE);
      expected.set(pagesOf([5, 7, 20])); // and gfn 33 a zero page
      assertEquals(b.get([5, 7, 20, 33]), expected);
      assertThrows(() => b.get([6]), PageStoreError, "gfn 6");
    } finally {
      b.close();
    }
    const stores = new PageStores(dir, 100, "h1");
    try {
      const c = stores.store("vm", 40);
      assertEquals(c.heldPages, 4);
      assertEquals(stores.heldPages(), 4);
      assertEquals(stores.list(), [{ vm: "vm", heldPages: 4, pendingPages: 0 }]);
      assertEquals(c.get([20, 5]), pagesOf([20, 5]));
    } finally {
      stores.drop("vm");
    }
  });
});

Deno.test("opening a VM's store fresh empties it, even when it is already open", () => {
  withDir((dir) => {
    const stores = new PageStores(dir, 100, "h1");
    try {
      const s = stores.store("vm", 16);
      s.put([1, 2], pagesOf([1, 2]));
      assertEquals(stores.store("vm", 16), s, "the open store is reused");
      const f = stores.store("vm", 16, true);
      assertEquals([f.heldPages, stores.heldPages()], [0, 0]);
      assertThrows(() => f.get([1]), PageStoreError, "gfn 1");
      f.holdZero([1]);
      assertEquals(f.get([1]), new Uint8Array(PAGE_SIZE), "old contents are gone");
    } finally {
      stores.drop("vm");
    }
    const again = new PageStores(dir, 100, "h1");
    try {
      assertEquals(again.store("vm", 16).heldPages, 0);
    } finally {
      again.drop("vm");
    }
  });
});

Deno.test("a host refuses pages beyond its capacity and a VM's store of another size", () => {
  withDir((dir) => {
    const stores = new PageStores(dir, 10, "h1");
    try {
      stores.store("a", 64).holdZero([0, 1, 2, 3, 4, 5]);
      stores.store("b", 64).put([9, 10], pagesOf([9, 10]));
      assertEquals(stores.heldPages(), 8);
      stores.reserve(2);
      stores.reserve(0);
      assertThrows(() => stores.reserve(3), PageStoreError, "page store of h1 is full");
      assertThrows(
        () => stores.store("a", 65),
        PageStoreError,
        "has 64 pages, the request says 65",
      );
      stores.store("b", 64).release([9]);
      stores.reserve(3);
      // A restarted agent (a new PageStores) refuses another size too, rather than cutting pages.
      assertThrows(
        () => new PageStores(dir, 10, "h1").store("b", 32),
        PageStoreError,
        "has 64 pages, the request says 32",
      );
    } finally {
      stores.drop("a");
      stores.drop("b");
    }
  });
});

Deno.test("dropping a VM's store closes it and deletes its files", () => {
  withDir((dir) => {
    const stores = new PageStores(dir, 10, "h1");
    stores.store("vm", 8).holdZero([1]);
    stores.store("other", 8).holdZero([2]);
    for (const ext of ["pages", "held"]) assert(Deno.statSync(join(dir, `vm.${ext}`)).isFile);
    stores.drop("vm");
    for (const ext of ["pages", "held"]) {
      assertThrows(() => Deno.statSync(join(dir, `vm.${ext}`)), Deno.errors.NotFound);
    }
    assertEquals(stores.list(), [{ vm: "other", heldPages: 1, pendingPages: 0 }]);
    assertEquals(stores.heldPages(), 1);
    stores.drop("vm"); // dropping twice is harmless
    assertEquals(stores.store("vm", 8).heldPages, 0);
    stores.drop("vm");
    stores.drop("other");
  });
});

/** A store of VM "v" (64 pages) holding pages 3 and 40, closed; returns the index path. */
function storeWithPages(dir: string): string {
  const s = VmPageStore.open(dir, "v", 64);
  s.put([3, 40], pagesOf([3, 40]));
  s.close();
  return join(dir, "v.held");
}

/** Rewrites bytes of `path` at `at`. */
function poke(path: string, at: number, bytes: number[]) {
  const f = Deno.openSync(path, { read: true, write: true });
  f.seekSync(at, Deno.SeekMode.Start);
  f.writeSync(new Uint8Array(bytes));
  f.close();
}

Deno.test("a page store index that is not one, is cut short, fails a checksum or is newer is refused by name", () => {
  const cases: Array<[string, (path: string) => void, string]> = [
    ["wrong magic", (p) => poke(p, 0, [0x58]), "wrong magic"],
    ["short header", (p) => Deno.truncateSync(p, 10), "too short for its header"],
    ["header checksum", (p) => poke(p, 12, [65]), "index header checksum mismatch"],
    ["bitmap checksum", (p) => poke(p, 32, [0xff]), "held bitmap checksum mismatch"],
    ["newer version", (p) => poke(p, 8, [2, 0]), "is newer than this dcres"],
    ["truncated bitmap", (p) => Deno.truncateSync(p, 34), "truncated in its bitmap"],
    ["truncated checksums", (p) => Deno.truncateSync(p, 48), "truncated in its page checksums"],
  ];
  for (const [what, damage, msg] of cases) {
    withDir((dir) => {
      const path = storeWithPages(dir);
      assertEquals(VmPageStore.open(dir, "v", 64).heldPages, 2, "intact before");
      damage(path);
      try {
        assertThrows(() => VmPageStore.open(dir, "v", 64), PageStoreError, msg);
      } catch (e) {
        throw new Error(`${what}: ${(e as Error).message}`);
      }
    });
  }
});

Deno.test("a page whose bytes changed on disk is refused by its checksum, never served", () => {
  withDir((dir) => {
    storeWithPages(dir);
    poke(join(dir, "v.pages"), 40 * PAGE_SIZE + 100, [0xee]);
    const s = VmPageStore.open(dir, "v", 64);
    try {
      assertEquals(s.get([3]), pagesOf([3]));
      assertThrows(() => s.get([40]), PageStoreError, "gfn 40 is damaged on this host");
    } finally {
      s.close();
    }
  });
});
