/// <reference lib="deno.worker" />
/**
 * Test helper thread that touches guest memory when the test says so, from outside the thread
 * under test, as a thread the vCPU pause does not stop would: on `go` it writes one byte at a raw
 * address (which may block in a userfaultfd fault until it is served) and then raises `done`.
 *
 * Shared words (Int32): 0 go, 1 done, 2 the byte to write; BigInt64 at byte 16: the address.
 */
import * as libc from "../../src/ffi/libc.ts";

self.onmessage = (e: MessageEvent<SharedArrayBuffer>) => {
  const words = new Int32Array(e.data, 0, 4);
  const addr = new BigInt64Array(e.data, 16, 1);
  self.postMessage("ready");
  // The test's thread waits synchronously for this one, so the signal is a shared word, not a
  // message (its event loop cannot deliver one meanwhile).
  while (Atomics.load(words, 0) === 0) Atomics.wait(words, 0, 0);
  libc.bytesAt(libc.ptrOf(BigInt.asUintN(64, addr[0])), 1)[0] = Atomics.load(words, 2);
  Atomics.store(words, 1, 1);
  Atomics.notify(words, 1);
  self.postMessage("done");
};
