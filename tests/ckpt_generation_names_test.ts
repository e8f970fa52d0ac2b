/**
 * Generation directory names (codec/names.ts, ckpt/store.ts): six digits, and more once a store
 * passes generation 999999, which a checkpoint every 20 s reaches in 231 days; every reader takes
 * the longer names the writer makes, up to the newest generation a host may report.
 */
import { assertEquals } from "./helpers/assert.ts";
import { isName } from "../src/codec/names.ts";
import {
  CheckpointStore,
  generationName,
  generationOf,
  MAX_GENERATION,
} from "../src/ckpt/store.ts";
import { MANIFEST_FILE } from "../src/ckpt/manifest.ts";

Deno.test("a store past generation 999999 goes on: seven-digit directories are named, listed in order and pass the name checks", () => {
  const root = Deno.makeTempDirSync({ prefix: "dcres-gen-" });
  try {
    for (const n of [999_999, 1_000_000, 1_000_001]) {
      const dir = `${root}/${generationName(n)}`;
      Deno.mkdirSync(dir);
      if (n !== 1_000_001) Deno.writeTextFileSync(`${dir}/${MANIFEST_FILE}`, "");
    }
    assertEquals(generationName(1_000_000), "g1000000");
    assertEquals(
      new CheckpointStore(root).generations().map((g) => [g.generation, g.committed]),
      [[999_999, true], [1_000_000, true], [1_000_001, false]],
    );
    assertEquals(isName("generation", "g1000000"), true);
    assertEquals(isName("fragment-path", "g1000000/node1.frag"), true);
  } finally {
    Deno.removeSync(root, { recursive: true });
  }
});

Deno.test("only g and six to nine digits name a generation, the newest a host may report being the largest", () => {
  assertEquals(generationOf(generationName(MAX_GENERATION)), MAX_GENERATION);
  assertEquals(generationOf("g000001"), 1);
  for (const bad of ["g00001", "g1234567890", "g-00001", "000001", "g000001/", "G000001"]) {
    assertEquals(generationOf(bad), undefined, bad);
    assertEquals(isName("generation", bad), false, bad);
  }
});
