/**
 * A split checkpoint's I/O on a real main host: guest memory and write protection through the
 * pager, main's fragment through a FragmentWriter, sub-hosts through their links' `pages.save*`
 * calls.
 */
import * as libc from "../ffi/libc.ts";
import type { FragmentWriter } from "../ckpt/fragment_writer.ts";
import { checkRuns, expandRuns, gfnRuns } from "../memory/runs.ts";
import { presentPages, type RemotePager } from "./remote_pager.ts";
import type { MainFragmentIo, SplitSaveIo, SubSaveLink } from "./split_session.ts";
import type { SubLink } from "./sub_link.ts";
import { PAGE_SIZE } from "../accel/accel.ts";

/** Gfns from a sub-host's [first, count] runs, all inside the VM's `pages`. */
function fromRuns(host: string, runs: unknown, pages: number): number[] {
  const refuse = (why: string) =>
    new Error(`${host} answered a save with pages outside the VM: ${why}`);
  return expandRuns(checkRuns(runs, pages, refuse).runs);
}

/** Where `bytes` are, for a FragmentWriter. */
function sourceOf(bytes: Uint8Array) {
  const b = bytes as Uint8Array<ArrayBuffer>;
  return { bytes: b, base: libc.ptrValue(Deno.UnsafePointer.of(b)) };
}

/** Main's fragment written by `w`; every append is flushed before it resolves. */
function mainFragment(pager: RemotePager, w: FragmentWriter): MainFragmentIo {
  const zero = new Uint8Array(PAGE_SIZE);
  return {
    async appendMemory(gfns) {
      if (!gfns.length) return;
      const mem = pager.memory;
      await w.append(gfns, { bytes: mem.view(), base: mem.hostAddr });
      await w.flush();
    },
    async appendZeros(gfns) {
      if (!gfns.length) return;
      await w.append(gfns, sourceOf(zero), new Array(gfns.length).fill(0));
      await w.flush();
    },
    async appendPages(gfns, data, offsets) {
      if (!gfns.length) return;
      await w.append(gfns, sourceOf(data), offsets ?? gfns.map((_, i) => i * PAGE_SIZE));
      await w.flush();
    },
    finish: () => w.finish(),
    abort: () => w.abort(),
  };
}

/** A sub-host reached over its link. */
function subSaveLink(l: SubLink, pages: number, id: string): SubSaveLink {
  return {
    index: l.index,
    get host() {
      return l.host;
    },
    async owe(gfns) {
      await l.call("pages.save.owe", { id, gfns: gfnRuns(gfns) });
    },
    async point() {
      await l.call("pages.save.point", { id });
    },
    async save(gfns) {
      const r = await l.call<{ saved: unknown; received: unknown }>("pages.save", {
        id,
        gfns: gfnRuns(gfns),
      });
      const received = Number.isSafeInteger(r.received) ? r.received as number : 0;
      return { saved: fromRuns(l.host, r.saved, pages), received };
    },
  };
}

/**
 * The I/O of checkpoint `id` of `pager`'s VM, writing main's fragment with `w`, with sub-hosts
 * `subs` (every request names the checkpoint, so one that outlives it is refused).
 */
export function pagerSaveIo(
  pager: RemotePager,
  w: FragmentWriter,
  subs: SubLink[],
  id: string,
): SplitSaveIo {
  return {
    ownership: pager.ownership,
    pages: pager.memory.pages,
    subs: subs.map((l) => subSaveLink(l, pager.memory.pages, id)),
    fragment: mainFragment(pager, w),
    withMemory: (fn) => pager.withMemory(fn),
    present: () => presentPages(pager.memory),
    readPage: (g) => pager.memory.view(g * PAGE_SIZE, PAGE_SIZE).slice(),
    protect: (runs, on) => pager.protect(runs, on),
    onWriteProtected(fn) {
      pager.onWriteProtected = fn;
    },
  };
}
