/**
 * A checkpoint named by its id on an agent (agent/paths.ts `checkpointPath`): while a merge of its
 * chain and the original both exist (a merge commits, then removes what it squashed; a merge cut
 * short leaves both), the id names the merge, which stands alone. The fault suite met a full id
 * refused as "ambiguous" in that window.
 */
import { assertEquals, assertThrows } from "./helpers/assert.ts";
import { checkpointPath } from "../src/agent/paths.ts";
import { commitManifest, type Manifest } from "../src/ckpt/manifest.ts";
import { generationName } from "../src/ckpt/store.ts";
import { RpcError } from "../src/rpc/errors.ts";
import { manifestFor } from "./helpers/ckpt_fixture.ts";

/** Ids; A and D share their first 8 digits. */
const [A, B, C, D] = ["aaaaaaaa", "bbbbbbbb", "cccccccc", "aaaaaaaa"].map((p, i) =>
  `${p}${String(i).repeat(24)}`
);

/** Commits generation `g` of store `store` under `root` with id `id` (standing for `from`). */
function generation(root: string, store: string, g: number, id: string, from?: string): string {
  const dir = `${root}/${store}/${generationName(g)}`;
  Deno.mkdirSync(dir, { recursive: true });
  const m: Manifest = { ...manifestFor(8, `${generationName(g)}/main.frag`, 1), id, generation: g };
  commitManifest(dir, from ? { ...m, mergedFromId: from } : m);
  return dir;
}

Deno.test("an id whose chain was merged names the merge, while the original is still there and after it is gone", () => {
  const root = Deno.makeTempDirSync({ prefix: "dcres-ids-" });
  try {
    generation(root, "sv", 1, A);
    const original = generation(root, "sv", 2, B);
    assertEquals(checkpointPath(root, B, "generation", "operator"), original);
    const merge = generation(root, "sv", 3, C, B);
    assertEquals(checkpointPath(root, B, "generation", "operator"), merge);
    assertEquals(checkpointPath(root, B.slice(0, 8), "store", "operator"), `${root}/sv`);
    Deno.removeSync(original, { recursive: true });
    assertEquals(checkpointPath(root, B, "generation", "operator"), merge);
    // The merge's own id names it too.
    assertEquals(checkpointPath(root, C, "generation", "operator"), merge);
  } finally {
    Deno.removeSync(root, { recursive: true });
  }
});

Deno.test("a prefix of two checkpoints' ids, or one id in two stores, is ambiguous", () => {
  const root = Deno.makeTempDirSync({ prefix: "dcres-ids-" });
  try {
    generation(root, "sv", 1, A);
    generation(root, "sv", 2, D);
    assertThrows(
      () => checkpointPath(root, "aaaaaaaa", "generation", "operator"),
      RpcError,
      "is ambiguous here",
    );
    assertEquals(checkpointPath(root, A, "generation", "operator"), `${root}/sv/g000001`);
    generation(root, "other", 1, B);
    generation(root, "sv", 3, C, B);
    assertThrows(
      () => checkpointPath(root, B, "generation", "operator"),
      RpcError,
      "is ambiguous here",
    );
    assertThrows(
      () => checkpointPath(root, `${"ee".repeat(16)}`, "generation", "operator"),
      RpcError,
      "no checkpoint with id",
    );
  } finally {
    Deno.removeSync(root, { recursive: true });
  }
});
