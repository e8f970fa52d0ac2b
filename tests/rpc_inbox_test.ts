/**
 * The RPC inbox is bounded: a producer that awaits its pushes waits while the inbox is full, the
 * reader draining it lets the producer go on, and a reader that goes away never leaves a producer
 * waiting.
 */
import { assert, assertEquals } from "./helpers/assert.ts";
import { Inbox } from "../src/rpc/inbox.ts";
import { Dispatcher } from "../src/rpc/dispatcher.ts";
import { nextTurn } from "../src/rpc/deadline.ts";

const chunk = (n: number, v: number) => new Uint8Array(n).fill(v);

/** True when `p` has settled after the pending turns ran. */
async function settled(p: Promise<unknown>): Promise<boolean> {
  let done = false;
  void p.then(() => done = true);
  await nextTurn();
  return done;
}

Deno.test("a full inbox holds its producer until the reader drains it, and never holds more than its bound", async () => {
  const inbox = new Inbox(10);
  let most = 0;
  const produced: number[] = [];
  const producer = (async () => {
    for (let v = 1; v <= 20; v++) {
      await inbox.push(chunk(4, v));
      produced.push(v);
      most = Math.max(most, inbox.queuedBytes);
    }
    inbox.end();
  })();
  await nextTurn();
  assertEquals(produced, [1, 2], "two 4-byte chunks fit in 10 bytes; the third waits");
  assertEquals(inbox.queuedBytes, 8);
  const reader = inbox[Symbol.asyncIterator]();
  const first = await reader.next();
  assertEquals(first.value, chunk(4, 1));
  await nextTurn();
  assertEquals(produced, [1, 2, 3], "one chunk read, one more let in");
  const got = [1];
  for (let r = await reader.next(); !r.done; r = await reader.next()) {
    got.push(r.value[0]);
    assert(inbox.queuedBytes <= 10, `queued ${inbox.queuedBytes} bytes`);
  }
  await producer;
  assertEquals(got, Array.from({ length: 20 }, (_, i) => i + 1), "every chunk, in order");
  assert(most <= 10, `the inbox held ${most} bytes`);
});

Deno.test("pushes that do not wait still arrive in order, and a chunk larger than the bound passes alone", async () => {
  const inbox = new Inbox(10);
  const pushes = [inbox.push(chunk(16, 1)), inbox.push(chunk(3, 2)), inbox.push(chunk(3, 3))];
  assert(await settled(pushes[0]), "an empty inbox takes a chunk of any size");
  assert(!(await settled(pushes[1])), "the next waits for the big one to be read");
  inbox.end();
  const got: number[] = [];
  for await (const b of inbox) got.push(b[0]);
  assertEquals(got, [1, 2, 3]);
  await Promise.all(pushes);
});

Deno.test("a reader that stops, or a call that ends unread, lets the waiting producer go on", async () => {
  const inbox = new Inbox(4);
  await inbox.push(chunk(4, 1));
  const waiting = inbox.push(chunk(4, 2));
  for await (const _ of inbox) break;
  assert(await settled(waiting), "the reader left: nobody takes the chunk, its producer goes on");

  const call = new Dispatcher({ ignore: () => Promise.resolve("done") }).open(
    { method: "ignore", args: {} },
    { peer: "local", role: "root", via: "local" },
    { progress: () => {}, send: () => Promise.resolve() },
  );
  for (let i = 0; i < 4; i++) void call.data(chunk(4 << 20, i));
  const late = call.data(chunk(4 << 20, 9));
  assertEquals((await call.outcome).ok, true);
  assert(await settled(late), "the call is over: a transport waiting for room reads on");
});
