/**
 * The checkpoint store's commit, and the restore-time cross-checks that bind a manifest to its
 * fragments: a damaged or mismatched checkpoint is refused naming the file.
 */
import { join } from "node:path";
import { assert, assertEquals, assertThrows } from "./helpers/assert.ts";
import { CheckpointFormatError } from "../src/ckpt/format.ts";
import { PAGE_SIZE as PAGE } from "../src/accel/accel.ts";
import {
  commitManifest,
  encodeManifest,
  type Manifest,
  readManifest,
} from "../src/ckpt/manifest.ts";
import { CheckpointStore } from "../src/ckpt/store.ts";
import { OpenCheckpoint } from "../src/ckpt/open_checkpoint.ts";
import {
  addressOf,
  FRAG_PAGES,
  guestMemory,
  machineState,
  MANIFEST_HEADER,
  manifestFor,
  withTempDir,
  writeFragment,
} from "./helpers/ckpt_fixture.ts";

// ---------------------------------------------------------------------------------------------
// The store and the restore-time cross-checks that bind a manifest to its fragments.

/** A store with one committed generation (fragment + manifest); returns the generation dir. */
async function committedStore(
  root: string,
  compress = false,
): Promise<{ dir: string; manifest: Manifest }> {
  const store = new CheckpointStore(root);
  const { dir } = store.begin();
  const footerCrc = await writeFragment(join(dir, "main.frag"), compress);
  const rel = `${dir.slice(root.length + 1)}/main.frag`;
  const manifest = manifestFor(FRAG_PAGES, rel, footerCrc);
  commitManifest(dir, manifest);
  return { dir, manifest };
}

Deno.test("commitManifest leaves exactly the encoded bytes in MANIFEST and no MANIFEST.tmp", () =>
  withTempDir(async (root) => {
    const { dir, manifest } = await committedStore(root);
    assertEquals(Deno.readFileSync(join(dir, "MANIFEST")), encodeManifest(manifest));
    assertThrows(() => Deno.statSync(join(dir, "MANIFEST.tmp")), Deno.errors.NotFound);
    assertEquals(readManifest(dir), manifest);
  }));

Deno.test("an interrupted generation (fragment and MANIFEST.tmp, no MANIFEST) is ignored by readers and removed by the next writer", () =>
  withTempDir(async (root) => {
    const { dir: first } = await committedStore(root);
    const store = new CheckpointStore(root);
    const { generation, dir: broken, release } = store.begin();
    assertEquals(generation, 2);
    await writeFragment(join(broken, "main.frag"), false);
    Deno.writeFileSync(join(broken, "MANIFEST.tmp"), new Uint8Array(10));
    assertEquals(store.generations().map((g) => [g.generation, g.committed]), [[1, true], [
      2,
      false,
    ]]);
    assertEquals(store.latest()?.dir, first);
    assertEquals(OpenCheckpoint.open(root).dir, first);
    // Its writer died (which lets go of its hold on the directory).
    release();
    const next = store.begin();
    assertEquals(next.generation, 2, "the interrupted generation's number is reused");
    assertEquals([...Deno.readDirSync(next.dir)], [], "its files were removed");
  }));

Deno.test("restore opens a committed checkpoint and loads every page as saved", () =>
  withTempDir(async (root) => {
    await committedStore(root, true);
    const ck = OpenCheckpoint.open(root);
    try {
      const dst = new Uint8Array(FRAG_PAGES * PAGE);
      ck.loadTo(Array.from({ length: FRAG_PAGES }, (_, g) => g), dst, addressOf(dst));
      assertEquals(dst, guestMemory().bytes);
      assert(ck.isZero(2) && ck.isZero(5) && !ck.isZero(0));
    } finally {
      ck.close();
    }
  }));

Deno.test("restore refuses a fragment that was replaced by another valid one: the footer CRC binds it", () =>
  withTempDir(async (root) => {
    const { dir } = await committedStore(root);
    const frag = join(dir, "main.frag");
    Deno.removeSync(frag);
    await writeFragment(frag, false, 3, (mem) => mem[7 * PAGE + 100]++); // one byte of gfn 7 differs
    const e = assertThrows(
      () => OpenCheckpoint.open(root),
      CheckpointFormatError,
      "fragment does not belong to this checkpoint",
    ) as CheckpointFormatError;
    assert(e.message.startsWith(`${frag}: at byte ${Deno.statSync(frag).size - 4}: `), e.message);
  }));

Deno.test("restore refuses a page map that does not cover guest memory exactly once", () =>
  withTempDir(async (root) => {
    const { dir, manifest } = await committedStore(root);
    commitManifest(dir, { ...manifest, pageMap: Uint32Array.of(0, 4, 0, 5, 3, 0) });
    assertThrows(
      () => OpenCheckpoint.open(root),
      CheckpointFormatError,
      `${join(dir, "MANIFEST")}: at byte 0: page map does not cover guest memory exactly once`,
    );
  }));

Deno.test("restore refuses a checkpoint whose fragment lacks a page the page map assigns to it, naming the gfn", () =>
  withTempDir(async (root) => {
    const { dir, manifest } = await committedStore(root);
    const machine = machineState(9 * PAGE); // one page more than the fragment holds
    // Named twice, the fragment's 8 pages are enough for either share, so the per-page check is
    // what finds gfn 8 missing (a share larger than its file is refused before, by count).
    const fragments = [manifest.fragments[0], manifest.fragments[0]];
    const pageMap = Uint32Array.of(0, 8, 0, 8, 1, 1);
    commitManifest(dir, { ...manifest, machine, fragments, pageMap });
    assertThrows(
      () => OpenCheckpoint.open(root),
      CheckpointFormatError,
      "page gfn 8 is missing from this fragment, which the manifest says holds it",
    );
  }));

Deno.test("restore refuses a committed generation whose manifest is damaged, naming MANIFEST", () =>
  withTempDir(async (root) => {
    const { dir } = await committedStore(root);
    const file = join(dir, "MANIFEST");
    const bytes = Deno.readFileSync(file);
    bytes[MANIFEST_HEADER + 5] ^= 4;
    Deno.writeFileSync(file, bytes);
    assertThrows(() => OpenCheckpoint.open(root), CheckpointFormatError, `${file}: at byte `);
  }));

Deno.test("restore of part of a checkpoint whose fragment is bad fails with that fragment's error, not a TypeError from the cleanup", () =>
  withTempDir(async (root) => {
    const { dir, manifest } = await committedStore(root);
    // Fragment 0 is another host's (left out by `only`); fragment 1, ours, is not this checkpoint's.
    const ours = {
      ...manifest.fragments[0],
      host: "sub1",
      footerCrc: manifest.fragments[0].footerCrc ^ 1,
    };
    commitManifest(dir, { ...manifest, fragments: [manifest.fragments[0], ours] });
    assertThrows(
      () => OpenCheckpoint.open(root, new Set([1])),
      CheckpointFormatError,
      "fragment does not belong to this checkpoint",
    );
  }));
