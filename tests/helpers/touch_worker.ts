/// <reference lib="deno.worker" />
/** Test helper thread: writes one byte at a raw address (which may block in a userfaultfd fault). */
import * as libc from "../../src/ffi/libc.ts";

self.onmessage = (e: MessageEvent<{ addr: bigint; value: number }>) => {
  libc.bytesAt(libc.ptrOf(e.data.addr), 1)[0] = e.data.value;
  self.postMessage("written");
};
