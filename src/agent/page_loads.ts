/**
 * A sub-host's part of a split restore: the pages of the checkpoint's fragments assigned to this
 * host are loaded from its local copies into a fresh page store of the VM, which main then pages
 * from.
 */
import * as libc from "../ffi/libc.ts";
import { OpenCheckpoint } from "../ckpt/open_checkpoint.ts";
import type { RpcHandler } from "../rpc/dispatcher.ts";
import { RpcError } from "../rpc/errors.ts";
import type { CallerRole } from "../rpc/roles.ts";
import type { PageStores } from "../paging/page_store.ts";
import { PAGE_SIZE } from "../accel/accel.ts";
import { nextTurn } from "../rpc/deadline.ts";

const BATCH = 1024;

/** `pages.load`: fill the store of `vm` with the pages of fragments `fragments` of checkpoint `ckpt`. */
export function pageLoadHandlers(
  stores: PageStores,
  resolve: (arg: unknown, role: CallerRole, field?: string) => string,
  vmArgs: (a: Record<string, unknown>) => { vm: string; pages: number },
): Record<string, RpcHandler> {
  return {
    "pages.load": async (args, ctx) => {
      const { vm, pages } = vmArgs(args);
      const frags = args.fragments;
      if (!Array.isArray(frags) || !frags.every((f) => Number.isSafeInteger(f) && f >= 0)) {
        throw new RpcError("bad-request", "fragments must be fragment indices");
      }
      const t0 = performance.now();
      const ck = OpenCheckpoint.open(
        resolve(args.ckpt, ctx.role, "ckpt"),
        new Set(frags as number[]),
      );
      try {
        if (ck.manifest.machine.spec.memSize !== pages * PAGE_SIZE) {
          throw new RpcError(
            "bad-request",
            `checkpoint ${ck.manifest.id} is not of a ${pages}-page VM`,
          );
        }
        const gfns = ck.pagesOf(new Set(frags as number[]));
        stores.drop(vm);
        stores.reserve(gfns.length);
        const store = stores.store(vm, pages, true);
        const buf = new Uint8Array(BATCH * PAGE_SIZE);
        const base = libc.ptrValue(Deno.UnsafePointer.of(buf));
        for (let i = 0; i < gfns.length; i += BATCH) {
          const part = gfns.slice(i, i + BATCH);
          ck.loadTo(part, buf, base, part.map((_, k) => k * PAGE_SIZE));
          store.put(part, buf.subarray(0, part.length * PAGE_SIZE));
          ctx.progress({ done: i + part.length, total: gfns.length });
          // The agent's other work (page channels of running VMs) gets a turn between batches.
          await nextTurn();
        }
        return { heldPages: store.heldPages, ms: performance.now() - t0 };
      } finally {
        ck.close();
      }
    },
  };
}
