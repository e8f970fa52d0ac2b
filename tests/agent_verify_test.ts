/**
 * The agent verifies a checkpoint in a Worker: the answer is the same as verifying in place, the
 * agent's own thread runs other work meanwhile, a damaged checkpoint's error keeps its message, and
 * the call's cancellation stops the Worker.
 */
import { noGuestReason, skipIf } from "./helpers/accel.ts";
import { assert, assertEquals, assertRejects } from "./helpers/assert.ts";
import { Machine } from "../src/vmm/machine.ts";
import { DirtyTracker } from "../src/memory/dirty_tracker.ts";
import { takeCheckpoint } from "../src/ckpt/save.ts";
import { verifyCheckpoint } from "../src/ckpt/inspect.ts";
import { resolveCheckpoint } from "../src/ckpt/store.ts";
import { verifyOffLoop } from "../src/agent/verify.ts";

/** A stop-mode checkpoint of a small running memstamp guest. */
async function smallCheckpoint(): Promise<string> {
  const m = await Machine.create(
    { name: "v", guest: "memstamp", memSize: 8 << 20, vcpus: 1 },
    { serialOut: () => {} },
  );
  try {
    const tracker = new DirtyTracker(m.vm.memory.pages, () => m.vm.dirtyBitmap());
    await m.vm.start();
    await m.memstamp!.waitStamped(120_000);
    const dir = Deno.makeTempDirSync({ prefix: "dcres-verify-" });
    await takeCheckpoint(m, tracker, {
      dir,
      mode: "stop",
      incremental: false,
      compress: false,
      maxDowntimeMs: 50,
    });
    return dir;
  } finally {
    await m.vm.stop();
  }
}

Deno.test({
  name: "a checkpoint verified in a Worker answers as in place while the agent's thread runs on",
  ...skipIf(noGuestReason, "needs a guest"),
  fn: async () => {
    const dir = await smallCheckpoint();
    let ranMeanwhile = false;
    const pending = verifyOffLoop(dir, true);
    setTimeout(() => ranMeanwhile = true, 0);
    const result = await pending;
    // Verified on this thread, the timer could only have run after the answer.
    assert(ranMeanwhile, "the agent's thread ran a timer while the Worker verified");
    assertEquals(result, verifyCheckpoint(dir, true));

    const { dir: gen, manifest } = resolveCheckpoint(dir);
    const frag = `${gen}/../${manifest.fragments[0].path}`;
    const bytes = Deno.readFileSync(frag);
    bytes[bytes.length - 100] ^= 0xff;
    Deno.writeFileSync(frag, bytes);
    const e = await assertRejects(() => verifyOffLoop(dir, true));
    assertEquals(e.name, "CheckpointFormatError");
    assert(e.message.includes(".frag"), e.message);

    const ac = new AbortController();
    const cancelled = verifyOffLoop(dir, true, ac.signal);
    ac.abort(new Error("the caller went away"));
    await assertRejects(() => cancelled, Error, "the caller went away");
  },
});
