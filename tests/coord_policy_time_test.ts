/**
 * The arithmetic of checkpoint policies (coord/policy_time.ts), for any input: a checkpoint is never
 * due before a period has passed since the newest, and at most a spread after it; first ones spread
 * over the period; the backoff doubles and never exceeds the period; one generation in `fullEvery`
 * is full; VMs are spread apart.
 */
import fc from "fast-check";
import { assert, assertEquals } from "./helpers/assert.ts";
import {
  dueAt,
  FIRST_SPREAD_MS,
  isFull,
  jitter,
  NEXT_SPREAD_MS,
  RETRY_BASE_MS,
  retryDelay,
} from "../src/coord/policy_time.ts";

const vm = fc.stringMatching(/^[a-z][a-z0-9-]{0,20}$/);
const every = fc.integer({ min: 1000, max: 366 * 86400_000 });
const time = fc.integer({ min: 0, max: 2 ** 45 });

Deno.test("a next checkpoint is due a period after the newest, never before, within its spread, the same on every coordinator", () => {
  fc.assert(
    fc.property(vm, every, time, fc.integer({ min: 1, max: 999_999 }), time, (v, e, t, g, s) => {
      const d = dueAt(v, e, { timeMs: t, generation: g }, s);
      assert(d >= t + e, `due ${d} before a period after ${t}`);
      assert(d <= t + e + Math.min(e * 0.1, NEXT_SPREAD_MS), `due ${d} spread too far`);
      assertEquals(dueAt(v, e, { timeMs: t, generation: g }, s + 12345), d);
    }),
  );
});

Deno.test("a first checkpoint is spread over at most a period (and a minute) after leading began", () => {
  fc.assert(fc.property(vm, every, time, (v, e, s) => {
    const d = dueAt(v, e, undefined, s);
    assert(d >= s && d < s + Math.min(e, FIRST_SPREAD_MS), `${d} outside its spread`);
  }));
});

Deno.test("jitter spreads VMs apart: 100 VMs with one period do not start in the same tenth of it", () => {
  const starts = Array.from({ length: 100 }, (_, i) => dueAt(`vm${i}`, 60_000, undefined, 0));
  const tenths = new Set(starts.map((d) => Math.floor(d / 6000)));
  assertEquals(tenths.size, 10, `first checkpoints fall in ${tenths.size} tenths of the period`);
  for (const j of starts.map((_, i) => jitter(`vm${i}`, 3))) assert(j >= 0 && j < 1);
});

Deno.test("the retry wait doubles from its base and is bounded by the period", () => {
  fc.assert(fc.property(fc.integer({ min: 1, max: 10_000 }), every, (f, e) => {
    const d = retryDelay(f, e);
    assert(d > 0 && d <= e, `${d} outside (0, ${e}]`);
    assert(retryDelay(f + 1, e) >= d, "the wait shrank");
    if (RETRY_BASE_MS * 2 ** f <= e) assertEquals(retryDelay(f + 1, e), 2 * d);
  }));
  assertEquals([1, 2, 3, 4, 5].map((f) => retryDelay(f, 6000)), [1000, 2000, 4000, 6000, 6000]);
});

Deno.test("one checkpoint in fullEvery is full; without incremental all are, with fullEvery 0 only the first", () => {
  fc.assert(
    fc.property(fc.integer({ min: 1, max: 50 }), fc.integer({ min: 1, max: 500 }), (f, n) => {
      let full = 0;
      for (let g = 0; g < n * f; g++) {
        if (isFull(true, f, g === 0 ? undefined : { timeMs: 0, generation: g })) full++;
      }
      assertEquals(full, n, `${full} full of ${n * f} with fullEvery ${f}`);
    }),
  );
  const gens = (inc: boolean, f: number) =>
    [0, 1, 2, 3, 4, 5, 6].filter((g) =>
      isFull(inc, f, g === 0 ? undefined : { timeMs: 0, generation: g })
    ).map((g) => g + 1);
  assertEquals(gens(true, 3), [1, 4, 7]);
  assertEquals(gens(true, 0), [1]);
  assertEquals(gens(false, 3), [1, 2, 3, 4, 5, 6, 7]);
});
