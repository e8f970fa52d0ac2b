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
  VmPageStore,
} from "../src/paging/page_store.ts";
import { PAGE_SIZE } from "../src/accel/accel.ts";

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
      s.backWith([3, 4, 5, 40], src);
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

Deno.test("the index claims only pages whose bytes are in the store", () => {
  withDir((dir) => {
    const a = VmPageStore.open(dir, "vm", 64, true);
    a.backWith([1, 2, 3], new FakeSource());
    a.get([2]);
    a.close();
    const b = VmPageStore.open(dir, "vm", 64);
    try {
      assertEquals(b.heldPages, 1, "a reopened store holds the page read in, not the others");
      assertEquals(b.get([2]), pagesOf([2]));
      assertThrows(() => b.get([1]), PageStoreError, "gfn 1 is not held");
    } finally {
      b.close();
    }
  });
});

Deno.test("a page main puts or releases ends its backing: the source is not read for it", () => {
  withDir((dir) => {
    const s = VmPageStore.open(dir, "vm", 64, true);
    const src = new FakeSource();
    try {
      s.backWith([1, 2, 3], src);
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
      s.backWith(gfns, src);
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
      s.backWith([8, 9, 10], bad);
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
      assertThrows(() => s.backWith([2], src), PageStoreError, "needs an empty page store");
      assertEquals(s.heldPages, 1);
      assertEquals(s.get([1]).length, PAGE_SIZE);
    } finally {
      s.close();
    }
  });
});
