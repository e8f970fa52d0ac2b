/**
 * SaveLedger and SubSaver, one contract at a time: the cases the consistency model cannot reach
 * through the real drivers (which never make them happen) but which each class promises anyway.
 */
import { assertEquals } from "./helpers/assert.ts";
import { MAIN } from "../src/paging/ownership.ts";
import { SaveLedger } from "../src/paging/save_ledger.ts";
import { SubSaver } from "../src/paging/sub_saver.ts";

Deno.test("after a copy-on-write point the first copy of a page stands, whoever reports later", () => {
  const l = new SaveLedger(4, [0, 1, 2]);
  l.freeze(() => 1);
  l.saved(1, [2], l.ticket([2]));
  l.saved(2, [2], l.ticket([2]));
  assertEquals(l.copy[2], 1);
});

Deno.test("a saved page is owed by nobody, even once a write voids its copy", () => {
  const l = new SaveLedger(4, [0, 1]);
  assertEquals(l.claim(1, () => true), [0, 1, 2, 3]);
  l.saved(MAIN, [0], l.ticket([0]));
  l.written([0], () => MAIN);
  assertEquals(l.owedBy(0, 1), false);
});

/** A saver whose every write of a page is counted, and whose writes succeed or throw on demand. */
function saver(fail = new Set<number>()) {
  const writes: number[] = [];
  const s = new SubSaver({
    holds: () => true,
    write: (gfns) => {
      writes.push(...gfns);
      return gfns.some((g) => fail.has(g)) ? Promise.reject(new Error("disk")) : Promise.resolve();
    },
  });
  return { s, writes };
}

Deno.test("after the point a sub-host saves a page once, however often it is asked", async () => {
  const { s, writes } = saver();
  s.owe([5]);
  await s.save([5]);
  await s.save([5]);
  assertEquals(writes, [5]);
});

Deno.test("a failed write fails its own save only, not the saves after it", async () => {
  const { s, writes } = saver(new Set([1]));
  let failed = false;
  await s.save([1]).catch(() => failed = true);
  assertEquals(failed, true);
  assertEquals(await s.save([2]), [2]);
  assertEquals(writes, [1, 2]);
});
