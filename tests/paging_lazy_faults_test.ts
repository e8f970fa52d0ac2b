/**
 * A lazy sub-host load under faults: a heal that ends after its store went, a data directory reached
 * through a symbolic link, a record naming a checkpoint outside the root, kills in the middle of a
 * record update, a drop or a fresh start, and a source given to a closed store. Unit tests over
 * temporary directories and a tiny real checkpoint.
 */
import { join } from "node:path";
import { assert, assertEquals, assertThrows } from "./helpers/assert.ts";
import { pagesOf, withDir } from "./helpers/page_fixture.ts";
import { CHECKPOINT_ID, FRAG_PAGES, manifestFor, writeFragment } from "./helpers/ckpt_fixture.ts";
import { type PageSource, PageStores, VmPageStore } from "../src/paging/page_store.ts";
import { lazyLayout, slotOffset } from "../src/paging/lazy_record.ts";
import { commitManifest } from "../src/ckpt/manifest.ts";
import { CheckpointStore } from "../src/ckpt/store.ts";
import { PageLoads } from "../src/agent/page_loads.ts";
import { checkpointPath } from "../src/agent/paths.ts";
import type { CallerRole } from "../src/rpc/roles.ts";
import type { RpcContext } from "../src/rpc/dispatcher.ts";

const DESCRIBE = new TextEncoder().encode('{"ckpt":"vm/g000001"}');
const ID = [...CHECKPOINT_ID].map((b) => b.toString(16).padStart(2, "0")).join("");

class FakeSource implements PageSource {
  closed = false;
  read(gfns: number[], into: Uint8Array<ArrayBuffer>): void {
    into.set(pagesOf(gfns));
  }
  close(): void {
    this.closed = true;
  }
}

/** A committed one-fragment checkpoint of FRAG_PAGES pages (a copy on node2) in store `dir`; its generation dir. */
async function checkpointIn(dir: string): Promise<string> {
  const store = new CheckpointStore(dir);
  const { dir: gen } = store.begin();
  const footerCrc = await writeFragment(join(gen, "main.frag"), false);
  const m = manifestFor(FRAG_PAGES, `${gen.slice(dir.length + 1)}/main.frag`, footerCrc);
  // Another host holds a copy: only such a fragment is loaded lazily.
  m.fragments[0].copies = ["node2"];
  commitManifest(gen, m);
  return gen;
}

function ctx(role: CallerRole): RpcContext {
  return { role, progress: () => {} } as unknown as RpcContext;
}

const vmArgs = (a: Record<string, unknown>) => ({ vm: a.vm as string, pages: a.pages as number });

/** The fds of this process open on `path`. */
function fdsOn(path: string): string[] {
  const out: string[] = [];
  for (const e of Deno.readDirSync("/proc/self/fd")) {
    try {
      if (Deno.readLinkSync(`/proc/self/fd/${e.name}`) === path) out.push(e.name);
    } catch {
      // Gone meanwhile (the readDir's own fd).
    }
  }
  return out;
}

async function withTmp(fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = Deno.realPathSync(Deno.makeTempDirSync({ prefix: "dcres-lazy-attack-" }));
  try {
    await fn(dir);
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
}

/** A promise and its resolver. */
function deferred<T>(): { p: Promise<T>; resolve: (v: T) => void } {
  let resolve!: (v: T) => void;
  const p = new Promise<T>((r) => resolve = r);
  return { p, resolve };
}

/**
 * A lazy load of vm1 (all FRAG_PAGES pages in fragment 0) whose fragment's first data pages are then
 * damaged in place, with a heal the test ends; the pending `ready` that asked for a damaged page.
 */
async function loadThenDamage(root: string) {
  const gen = await checkpointIn(join(root, "vm1"));
  const frag = join(gen, "main.frag");
  const stores = new PageStores(join(root, "..", "pages"), 1000, "h1");
  const healing = deferred<string[]>();
  let healCalls = 0;
  const loads = new PageLoads(
    stores,
    root,
    (arg, role, field) => checkpointPath(root, arg, "generation", role, field),
    () => {
      healCalls++;
      return healing.p;
    },
  );
  const h = loads.handlers(vmArgs);
  await h["pages.load"](
    { vm: "vm1", pages: FRAG_PAGES, ckpt: "vm1", fragments: [0], lazy: true },
    ctx("agent"),
  );
  const store = stores.store("vm1", FRAG_PAGES);
  // Damage the data of the first chunk (gfns 1, 7, 0 after the zero page 5) under the open reader.
  const f = Deno.openSync(frag, { write: true });
  f.seekSync(4096, Deno.SeekMode.Start);
  f.writeSync(new Uint8Array(3 * 4096).fill(0xee));
  f.close();
  const asked = loads.ready(store, [7]).then(() => "served", (e) => `refused: ${e.message}`);
  await new Promise((r) => setTimeout(r, 0));
  assertEquals(healCalls, 1, "the damaged page started a heal");
  return { stores, store, frag, healing, asked };
}

Deno.test({
  name: "a heal that ends after the store was dropped leaves no descriptor open on the checkpoint",
  sanitizeOps: false,
  sanitizeResources: false,
  fn: () =>
    withTmp(async (tmp) => {
      const root = join(tmp, "ckpt");
      Deno.mkdirSync(root);
      const { stores, frag, healing, asked } = await loadThenDamage(root);
      stores.drop("vm1");
      assertEquals(fdsOn(frag), [], "the drop let go of the fragment");
      // Something else opens a file meanwhile (it takes the freed descriptor number), so the heal's
      // reopened fragment gets another.
      const other = join(tmp, "other");
      Deno.writeFileSync(other, new Uint8Array([1, 2, 3]));
      const f = Deno.openSync(other, { read: true });
      healing.resolve(["vm1/g000001/main.frag"]);
      await asked;
      try {
        assertEquals(fdsOn(frag), [], "the heal's reopened checkpoint is closed, not leaked");
      } finally {
        try {
          f.close();
        } catch {
          // Closed under us (the next test).
        }
      }
    }),
});

Deno.test({
  name: "a heal that ends after the store was dropped does not close a descriptor opened since",
  sanitizeOps: false,
  sanitizeResources: false,
  fn: () =>
    withTmp(async (tmp) => {
      const root = join(tmp, "ckpt");
      Deno.mkdirSync(root);
      const { stores, healing, asked } = await loadThenDamage(root);
      stores.drop("vm1");
      // Another file opened meanwhile takes the lowest free descriptor: the old fragment's.
      const other = join(tmp, "other");
      Deno.writeFileSync(other, new Uint8Array([1, 2, 3]));
      const f = Deno.openSync(other, { read: true });
      try {
        healing.resolve(["vm1/g000001/main.frag"]);
        await asked;
        const buf = new Uint8Array(3);
        let err: unknown;
        try {
          f.seekSync(0, Deno.SeekMode.Start);
          f.readSync(buf);
        } catch (e) {
          err = e;
        }
        assertEquals(err, undefined, "a file opened after the drop is still open");
        assertEquals([...buf], [1, 2, 3]);
      } finally {
        try {
          f.close();
        } catch {
          // Closed under us.
        }
      }
    }),
});

Deno.test({
  name: "a heal that ends after a new load replaced the store leaves the stores' files alone",
  sanitizeOps: false,
  sanitizeResources: false,
  fn: () =>
    withTmp(async (tmp) => {
      const root = join(tmp, "ckpt");
      Deno.mkdirSync(root);
      const { stores, healing, asked } = await loadThenDamage(root);
      // The restore is tried again (its first try timed out on the damaged copy): a new load.
      const loads = new PageLoads(
        stores,
        root,
        (arg, role, field) => checkpointPath(root, arg, "generation", role, field),
      );
      await loads.handlers(vmArgs)["pages.load"](
        { vm: "vm1", pages: FRAG_PAGES, ckpt: "vm1", fragments: [0], lazy: true },
        ctx("agent"),
      );
      const vm1 = stores.store("vm1", FRAG_PAGES);
      healing.resolve(["vm1/g000001/main.frag"]);
      await asked;
      // Another VM's store opened afterwards; then main puts a page of vm1.
      stores.store("vm2", FRAG_PAGES, true);
      let putError: unknown;
      try {
        vm1.put([3], pagesOf([33]));
      } catch (e) {
        putError = e;
      }
      const back = VmPageStore.open(join(root, "..", "pages"), "vm2", FRAG_PAGES);
      try {
        assertEquals(putError, undefined, "main's put of a vm1 page is written");
        assertEquals(back.heldPages, 0, "vm2's index claims nothing vm1 was given");
      } finally {
        back.close();
        stores.drop("vm1");
        stores.drop("vm2");
      }
    }),
});

Deno.test({
  name: "a lazy load whose agent data directory is reached through a symlink is picked up again",
  sanitizeOps: false,
  sanitizeResources: false,
  fn: () =>
    withTmp(async (tmp) => {
      Deno.mkdirSync(join(tmp, "real", "ckpt"), { recursive: true });
      Deno.symlinkSync(join(tmp, "real"), join(tmp, "data"));
      const root = join(tmp, "data", "ckpt"); // as the agent builds it: join(dataDir, "ckpt")
      await checkpointIn(join(root, "vm1"));
      const resolve = (arg: unknown, role: CallerRole, field?: string) =>
        checkpointPath(root, arg, "generation", role, field);
      const first = new PageStores(join(tmp, "data", "pages"), 1000, "h1");
      await new PageLoads(first, root, resolve).handlers(vmArgs)["pages.load"](
        { vm: "vm1", pages: FRAG_PAGES, ckpt: "vm1", fragments: [0], lazy: true },
        ctx("agent"),
      );
      const recorded = new TextDecoder().decode(
        first.store("vm1", FRAG_PAGES).unfinishedLoad ?? new Uint8Array(),
      );
      // The agent is killed: its store's files are let go of as they are.
      first.store("vm1", FRAG_PAGES).close();
      const again = new PageStores(join(tmp, "data", "pages"), 1000, "h1");
      const failed = new PageLoads(again, root, resolve).resumeUnfinished();
      try {
        assertEquals(failed, [], `record ${recorded}`);
        assertEquals(again.store("vm1", FRAG_PAGES).get([7]).length, 4096);
      } finally {
        again.drop("vm1");
      }
    }),
});

Deno.test({
  name: "a lazy load record naming a checkpoint outside the checkpoint root is not resumed",
  sanitizeOps: false,
  sanitizeResources: false,
  fn: () =>
    withTmp(async (tmp) => {
      const root = join(tmp, "ckpt");
      Deno.mkdirSync(root);
      const outside = await checkpointIn(join(tmp, "elsewhere", "vm1"));
      const pages = join(tmp, "pages");
      const s = VmPageStore.open(pages, "vm1", FRAG_PAGES, true);
      const describe = JSON.stringify({ ckpt: outside, id: ID, fragments: [0] });
      s.backWith([0, 1, 7], new FakeSource(), new TextEncoder().encode(describe));
      s.close();
      const stores = new PageStores(pages, 1000, "h1");
      const failed = new PageLoads(
        stores,
        root,
        (arg, role, field) => checkpointPath(root, arg, "generation", role, field),
      ).resumeUnfinished();
      try {
        assertEquals(failed.map((f) => f.vm), ["vm1"], `${outside} is outside ${root}`);
      } finally {
        stores.drop("vm1");
      }
    }),
});

Deno.test("an update of the record cut short by a kill leaves the one before: main's put stands, and its unanswered release is sent again", () => {
  withDir((dir) => {
    const a = VmPageStore.open(dir, "vm", 64, true);
    a.backWith([1, 2, 3], new FakeSource(), DESCRIBE);
    a.put([1], pagesOf([77])); // main's page: only here now (update 1)
    const record = join(dir, "vm.lazy");
    const before = Deno.readFileSync(record);
    a.release([2]); // update 2, cut short below: main never had its answer
    a.close();
    const layout = lazyLayout(64, DESCRIBE.length);
    const torn = Deno.readFileSync(record);
    const at = slotOffset(layout, 2);
    torn.set(before.subarray(at + 4, at + layout.slotSize), at + 4);
    Deno.writeFileSync(record, torn);
    const b = VmPageStore.open(dir, "vm", 64);
    try {
      assertEquals(b.get([1]), pagesOf([77]), "main's put survives");
      assert(b.holds(2) && b.holds(3), "the state before the cut-short update");
      b.release([2]); // main sends the release it had no answer to again
      assert(!b.holds(2));
    } finally {
      b.close();
    }
  });
});

Deno.test("a drop killed part way never leaves a record that brings the dropped load back", () => {
  for (let killAfter = 0; killAfter < 3; killAfter++) {
    withDir((dir) => {
      const stores = new PageStores(dir, 1000, "h1");
      const s = stores.store("vm", 64, true);
      s.backWith([1, 2, 3, 4], new FakeSource(), DESCRIBE);
      s.get([1]);
      // The agent is killed after `killAfter` of the drop's removals.
      const removeSync = Deno.removeSync;
      let n = 0;
      Deno.removeSync = (p, o) => {
        if (n++ < killAfter) removeSync(p, o);
      };
      try {
        stores.drop("vm");
      } finally {
        Deno.removeSync = removeSync;
      }
      const again = new PageStores(dir, 1000, "h1");
      const left = again.unfinishedLoads();
      const held = Deno.readDirSync(dir).some((e) => e.name === "vm.held");
      // Either the drop had not begun (the store as it was), or the load is gone with the index.
      assert(
        left.length === 0 || held,
        `killed after ${killAfter} removals: no index, but a lazy load to resume: ${
          JSON.stringify(left)
        }`,
      );
    });
  }
});

Deno.test("a store started afresh and killed once its index is emptied comes back empty, without the old load", () => {
  withDir((dir) => {
    const a = VmPageStore.open(dir, "vm", 64, true);
    a.backWith([1, 2, 3], new FakeSource(), DESCRIBE);
    a.get([1]);
    a.close();
    // Started afresh (pages.open with hold), killed right after the index is emptied.
    const truncate = Deno.FsFile.prototype.truncateSync;
    Deno.FsFile.prototype.truncateSync = function (this: Deno.FsFile, len?: number) {
      truncate.call(this, len);
      if (len === 0) throw new Error("killed");
    };
    try {
      assertThrows(() => VmPageStore.open(dir, "vm", 64, true), Error, "killed");
    } finally {
      Deno.FsFile.prototype.truncateSync = truncate;
    }
    const c = VmPageStore.open(dir, "vm", 64);
    try {
      assertEquals(
        [c.heldPages, c.pendingPages],
        [0, 0],
        "a fresh index with the old load's pages",
      );
    } finally {
      c.close();
    }
  });
});

Deno.test("a source given to a closed store is closed, not kept", () => {
  withDir((dir) => {
    const s = VmPageStore.open(dir, "vm", 64, true);
    s.backWith([1, 2], new FakeSource(), DESCRIBE);
    s.close();
    const late = new FakeSource();
    s.replaceSource(late);
    assert(late.closed, "the late source is let go of");
  });
});

Deno.test("a lazy load of a fragment no other host holds reads it whole first, so a damaged page refuses it", async () => {
  await withTmp(async (tmp) => {
    const root = join(tmp, "ckpt");
    const store = new CheckpointStore(join(root, "vm1"));
    const { dir: gen } = store.begin();
    const footerCrc = await writeFragment(join(gen, "main.frag"), false);
    commitManifest(gen, manifestFor(FRAG_PAGES, "g000001/main.frag", footerCrc));
    const stores = new PageStores(join(tmp, "pages"), 1000, "h1");
    const load = new PageLoads(
      stores,
      root,
      (arg, role, field) => checkpointPath(root, arg, "generation", role, field),
    ).handlers(vmArgs)["pages.load"];
    const args = { vm: "vm1", pages: FRAG_PAGES, ckpt: "vm1", fragments: [0], lazy: true };
    try {
      const r = await load(args, ctx("agent")) as { lazy?: boolean };
      assertEquals(r.lazy, undefined, "loaded eagerly");
      assertEquals(stores.store("vm1", FRAG_PAGES).pendingPages, 0);
      const f = Deno.openSync(join(gen, "main.frag"), { write: true });
      // The first chunk's pages (gfns 1, 7 and 0; gfn 1's copy there is superseded).
      f.seekSync(4096, Deno.SeekMode.Start);
      f.writeSync(new Uint8Array(3 * 4096).fill(0xee));
      f.close();
      let refused: unknown;
      try {
        await load(args, ctx("agent"));
      } catch (e) {
        refused = e;
      }
      assert(refused instanceof Error && /checksum/.test(refused.message), String(refused));
    } finally {
      stores.drop("vm1");
    }
  });
});
