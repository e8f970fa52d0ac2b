/**
 * A page store backed by a checkpoint (a sub-host's lazy load): pages still in the source count as
 * held and are read from it once, on first request or by the fill, never claimed by the index
 * before their bytes are in the store; a page main put or released ends its backing.
 */
import { assert, assertEquals, assertThrows } from "./helpers/assert.ts";
import { pagesOf, withDir } from "./helpers/page_fixture.ts";
import {
  type PageSource,
  PageSourceError,
  PageStoreError,
  PageStores,
  VmPageStore,
} from "../src/paging/page_store.ts";
import { PAGE_SIZE } from "../src/accel/accel.ts";

/** What a lazy load records of its source (opaque to the store). */
const DESCRIBE = new TextEncoder().encode('{"ckpt":"vm/g000001"}');

/** A source giving pagesOf(gfn) for each gfn, counting reads; `broken` pages fail to read. */
class FakeSource implements PageSource {
  reads: number[] = [];
  closed = false;
  constructor(readonly broken = new Set<number>(), readonly tag = 0) {}
  read(gfns: number[], into: Uint8Array<ArrayBuffer>): void {
    const bad = gfns.find((g) => this.broken.has(g));
    if (bad !== undefined) throw new Error(`gfn ${bad} checksum mismatch`);
    this.reads.push(...gfns);
    into.set(pagesOf(gfns.map((g) => g + this.tag)));
  }
  close(): void {
    this.closed = true;
  }
}

Deno.test("pages still in the source are held, and read from it once, on first request", () => {
  withDir((dir) => {
    const s = VmPageStore.open(dir, "vm", 64, true);
    const src = new FakeSource();
    try {
      s.backWith([3, 4, 5, 40], src, DESCRIBE);
      assertEquals(s.heldPages, 4);
      assertEquals(s.pendingPages, 4);
      assert(s.holds(3) && s.holds(40) && !s.holds(6));
      assertEquals(s.bitmap()[0], 0b111000);
      assertEquals(src.reads, [], "nothing is read before it is asked for");
      assertEquals(s.get([40, 4]), pagesOf([40, 4]));
      assertEquals(s.get([4, 40, 3]), pagesOf([4, 40, 3]));
      assertEquals(src.reads.sort((a, b) => a - b), [3, 4, 40], "each page read once");
      assertEquals(s.pendingPages, 1);
      assertThrows(() => s.get([6]), PageStoreError, "gfn 6 is not held");
    } finally {
      s.close();
    }
    assert(src.closed, "closing the store lets go of its source");
  });
});

Deno.test("the index claims only pages whose bytes are in the store; the record, the others", () => {
  withDir((dir) => {
    const a = VmPageStore.open(dir, "vm", 64, true);
    a.backWith([1, 2, 3, 4, 5], new FakeSource(), DESCRIBE);
    a.get([2]);
    a.put([3], pagesOf([33]));
    a.release([4]);
    a.close();
    // An agent killed here: its index has pages 2 and 3, its lazy load record pages 1 and 5.
    const b = VmPageStore.open(dir, "vm", 64);
    try {
      assertEquals(b.heldPages, 4);
      assertEquals(b.pendingPages, 2);
      assert(b.holds(1) && b.holds(5) && !b.holds(4), "a released page is not held again");
      assertEquals(b.unfinishedLoad, DESCRIBE);
      assertThrows(() => b.get([1]), PageSourceError, "not open");
      const src = new FakeSource();
      b.replaceSource(src);
      assertEquals(b.unfinishedLoad, undefined);
      assertEquals(b.get([3, 2, 1]), pagesOf([33, 2, 1]), "main's put stands");
      b.fill(b.nextPending(10));
      assertEquals(src.reads, [1, 5]);
      assert(src.closed);
      assertThrows(() => Deno.statSync(`${dir}/vm.lazy`), Deno.errors.NotFound);
    } finally {
      b.close();
    }
    const c = VmPageStore.open(dir, "vm", 64);
    try {
      assertEquals([c.heldPages, c.pendingPages], [4, 0]);
    } finally {
      c.close();
    }
  });
});

Deno.test("a store started afresh, or dropped, leaves no lazy load record behind", () => {
  withDir((dir) => {
    const a = VmPageStore.open(dir, "vm", 64, true);
    a.backWith([1, 2], new FakeSource(), DESCRIBE);
    a.close();
    const b = VmPageStore.open(dir, "vm", 64, true);
    assertEquals([b.heldPages, b.unfinishedLoad], [0, undefined]);
    b.close();
    assertThrows(() => Deno.statSync(`${dir}/vm.lazy`), Deno.errors.NotFound);
    const stores = new PageStores(dir, 100, "h1");
    stores.store("vm", 64, true).backWith([7], new FakeSource(), DESCRIBE);
    stores.store("vm2", 64, true);
    assertEquals(stores.unfinishedLoads(), [{ vm: "vm", pages: 64 }]);
    stores.drop("vm");
    stores.drop("vm2");
    assertEquals(stores.unfinishedLoads(), []);
  });
});

Deno.test("a page main puts or releases ends its backing: the source is not read for it", () => {
  withDir((dir) => {
    const s = VmPageStore.open(dir, "vm", 64, true);
    const src = new FakeSource();
    try {
      s.backWith([1, 2, 3], src, DESCRIBE);
      s.put([1], pagesOf([77]));
      s.release([2]);
      assertEquals(s.heldPages, 2);
      assertEquals(s.pendingPages, 1);
      assert(!s.holds(2));
      assertEquals(s.get([1]), pagesOf([77]));
      assertThrows(() => s.get([2]), PageStoreError, "gfn 2 is not held");
      assertEquals(src.reads, []);
      s.get([3]);
      assertEquals(src.reads, [3]);
      assert(src.closed, "the source is let go once nothing is left in it");
      assertEquals(s.pendingPages, 0);
    } finally {
      s.close();
    }
  });
});

Deno.test("the fill brings every page in, batch by batch, each once", () => {
  withDir((dir) => {
    const s = VmPageStore.open(dir, "vm", 300, true);
    const src = new FakeSource();
    const gfns = Array.from({ length: 250 }, (_, i) => i + 50);
    try {
      s.backWith(gfns, src, DESCRIBE);
      s.get([120]);
      const batches: number[][] = [];
      for (let b = s.nextPending(64); b.length; b = s.nextPending(64)) {
        assert(b.length <= 64);
        batches.push(b);
        s.fill(b);
      }
      assertEquals(s.pendingPages, 0);
      assertEquals(s.heldPages, 250);
      assertEquals(src.reads.length, 250, "no page read twice");
      assertEquals(new Set(src.reads).size, 250);
      assertEquals(s.get(gfns), pagesOf(gfns));
      assert(src.closed);
    } finally {
      s.close();
    }
  });
});

Deno.test("a page the source cannot read is refused, stays pending, and comes from a replaced source", () => {
  withDir((dir) => {
    const s = VmPageStore.open(dir, "vm", 64, true);
    const bad = new FakeSource(new Set([9]));
    try {
      s.backWith([8, 9, 10], bad, DESCRIBE);
      assertThrows(() => s.get([8, 9]), PageSourceError, "gfn 9 checksum mismatch");
      assertEquals(s.pendingPages, 3, "nothing of a failed read is taken");
      assertEquals(s.get([10]), pagesOf([10]));
      const good = new FakeSource();
      s.replaceSource(good);
      assert(bad.closed);
      assertEquals(s.get([8, 9]), pagesOf([8, 9]));
      assertEquals(good.reads, [8, 9]);
    } finally {
      s.close();
    }
  });
});

Deno.test("only an empty store can be backed by a checkpoint", () => {
  withDir((dir) => {
    const s = VmPageStore.open(dir, "vm", 64, true);
    try {
      s.put([1], pagesOf([1]));
      const src = new FakeSource();
      assertThrows(
        () => s.backWith([2], src, DESCRIBE),
        PageStoreError,
        "needs an empty page store",
      );
      assertEquals(s.heldPages, 1);
      assertEquals(s.get([1]).length, PAGE_SIZE);
    } finally {
      s.close();
    }
  });
});

Deno.test("a host's stores read every page still in a checkpoint in before the agent stops, for as long as they are given", () => {
  withDir((dir) => {
    const stores = new PageStores(dir, 10_000, "h1");
    const good = new FakeSource(), bad = new FakeSource(new Set([7]));
    stores.store("a", 3000, true).backWith(
      Array.from({ length: 2500 }, (_, i) => i),
      good,
      DESCRIBE,
    );
    stores.store("b", 64, true).backWith([6, 7, 8], bad, DESCRIBE);
    assertEquals(stores.finishLoads(60_000), 3, "the pages of a source that fails are left");
    assertEquals(stores.list().map((s) => [s.vm, s.pendingPages]), [["a", 0], ["b", 3]]);
    assert(good.closed);
    stores.drop("b");
    const a = VmPageStore.open(dir, "a", 3000);
    try {
      assertEquals(a.heldPages, 2500, "a restarted agent's index claims them all");
      assertEquals(a.get([0, 2499]), pagesOf([0, 2499]));
    } finally {
      a.close();
      stores.drop("a");
    }
  });
});

Deno.test("a stopping agent out of time leaves the pages still in the checkpoint to the record", () => {
  withDir((dir) => {
    const stores = new PageStores(dir, 10_000, "h1");
    const src = new FakeSource();
    stores.store("a", 3000, true).backWith(
      Array.from({ length: 2500 }, (_, i) => i),
      src,
      DESCRIBE,
    );
    assertEquals(stores.finishLoads(0), 2500);
    assertEquals(src.reads, []);
    stores.store("a", 3000).close();
    const again = VmPageStore.open(dir, "a", 3000);
    try {
      assertEquals([again.pendingPages, again.heldPages], [2500, 2500]);
      assertEquals(again.unfinishedLoad, DESCRIBE);
    } finally {
      again.close();
      stores.drop("a");
    }
  });
});
