/** The host's boot time clock: one clock for every process, matching the kernel's uptime. */
import { assert } from "./helpers/assert.ts";
import { bootTimeMs } from "../src/ffi/libc.ts";

Deno.test("bootTimeMs is the kernel's uptime, moves forward, and reads the same in another process", async () => {
  const uptimeMs = () => Number(Deno.readTextFileSync("/proc/uptime").split(" ")[0]) * 1000;
  const a = bootTimeMs();
  const up = uptimeMs();
  assert(Math.abs(a - up) < 100, `boot time ${a} ms, /proc/uptime ${up} ms`);
  await new Promise((r) => setTimeout(r, 50));
  const b = bootTimeMs();
  assert(b - a >= 45, `${b - a} ms passed across a 50 ms sleep`);
  const child = await new Deno.Command(Deno.execPath(), {
    args: [
      "eval",
      `import { bootTimeMs } from "${new URL("../src/ffi/libc.ts", import.meta.url)}";` +
      "console.log(bootTimeMs());",
    ],
    stdout: "piped",
  }).output();
  const theirs = Number(new TextDecoder().decode(child.stdout));
  const after = bootTimeMs();
  assert(
    b <= theirs && theirs <= after,
    `another process read ${theirs}, between ${b} and ${after}`,
  );
});
