/** The one module dcres waits in time with (src/rpc/deadline.ts): sleeps, turns, bounded waits. */
import { assert, assertEquals, assertRejects } from "./helpers/assert.ts";
import { nextTurn, sleep, within, withTimeout } from "../src/rpc/deadline.ts";
import { RpcError } from "../src/rpc/errors.ts";

Deno.test("within gives a promise's value in time, else undefined, and passes its failure on", async () => {
  assertEquals(await within(Promise.resolve(7), 1000), 7);
  const t0 = performance.now();
  assertEquals(await within(new Promise<number>(() => {}), 20), undefined);
  assert(performance.now() - t0 >= 15, "it waited for the timer");
  await assertRejects(() => within(Promise.reject(new Error("broke")), 1000), Error, "broke");
});

Deno.test("sleep waits about its time, nextTurn lets due timers run first", async () => {
  const t0 = performance.now();
  await sleep(20);
  assert(performance.now() - t0 >= 15);
  let fired = false;
  setTimeout(() => fired = true, 0);
  await nextTurn();
  assert(fired, "a due timer ran before the turn ended");
});

Deno.test("withTimeout rejects with deadline-exceeded and tells onTimeout first", async () => {
  const told: string[] = [];
  const e = await assertRejects(
    () => withTimeout(new Promise(() => {}), 10, "the wait", (e) => told.push(e.code)),
    RpcError,
    "the wait timed out after 10 ms",
  );
  assertEquals((e as RpcError).code, "deadline-exceeded");
  assertEquals(told, ["deadline-exceeded"]);
});
