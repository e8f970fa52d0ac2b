/** The statvfs binding's layout, checked against coreutils' `stat -f` of the same file system. */
import { assert } from "./helpers/assert.ts";
import { statvfs } from "../src/ffi/libc.ts";

Deno.test("statvfs reads the size and free bytes stat -f reports", async () => {
  const dir = Deno.makeTempDirSync();
  const v = statvfs(dir);
  const out = await new Deno.Command("stat", { args: ["-f", "-c", "%S %b %a", dir] }).output();
  const [frsize, blocks, avail] = new TextDecoder().decode(out.stdout).trim().split(" ").map(
    Number,
  );
  assert(v.totalBytes === blocks * frsize, `total ${v.totalBytes} vs ${blocks * frsize}`);
  // Free space moves while others write; a layout error would be off by orders of magnitude.
  assert(
    Math.abs(v.availBytes - avail * frsize) < 256 << 20,
    `avail ${v.availBytes} vs ${avail * frsize}`,
  );
  Deno.removeSync(dir);
});
