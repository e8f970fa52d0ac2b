import { assert, assertEquals } from "./helpers/assert.ts";

Deno.test("deno task compile says in one line when the denort runtime is missing", async () => {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "--allow-all", new URL("../scripts/compile.ts", import.meta.url).pathname],
    env: { DENORT_BIN: "/nonexistent/denort" },
    stdout: "piped",
    stderr: "piped",
  }).output();
  assertEquals(out.code, 1);
  const lines = new TextDecoder().decode(out.stderr).trim().split("\n");
  assertEquals(lines.length, 1);
  assert(lines[0].includes("DENORT_BIN=/nonexistent/denort does not exist"), lines[0]);
});
