/**
 * Self-fencing in the VMM (issue 16 item 3): a VM runs while its host's lease is renewed, pauses by
 * itself once it lapses (with its agent nowhere in the loop), stays paused through an operator's
 * resume, and a lease file that cannot be read fences as a lapsed one would.
 */
import { assert, assertEquals } from "./helpers/assert.ts";
import { dcres, tempStateDir } from "./helpers/cli.ts";
import { bootTimeMs } from "../src/ffi/libc.ts";
import { LEASE_FILE, writeLease } from "../src/vmm_process/fence.ts";
import type { VmInfo } from "../src/vmm/control/protocol.ts";

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function info(state: string, name: string): Promise<VmInfo> {
  const r = await dcres(["--state-dir", state, "--json", "vm", "ls"]);
  assertEquals(r.code, 0, r.stderr);
  return (JSON.parse(r.stdout) as VmInfo[]).find((v) => v.name === name)!;
}

async function until(state: string, name: string, pred: (v: VmInfo) => boolean): Promise<VmInfo> {
  let last: VmInfo | undefined;
  for (const deadline = Date.now() + 60_000; Date.now() < deadline; await sleep(200)) {
    last = await info(state, name);
    if (pred(last)) return last;
  }
  throw new Error(`${name} never reached the state expected: ${JSON.stringify(last)}`);
}

const written = (v: VmInfo) => v.memstamp!.written;

Deno.test("a VM runs while its host's lease is renewed, pauses by itself once it lapses, and an operator's resume does not end the fence", async () => {
  const state = tempStateDir();
  const run = (...a: string[]) => dcres(["--state-dir", state, ...a], { timeoutMs: 120_000 });
  try {
    // The agent's heartbeats, renewing a 1.5 s lease every 300 ms.
    const renew = () => writeLease(state, { untilMs: bootTimeMs() + 1500, epoch: 3 });
    renew();
    const beats = setInterval(renew, 300);
    try {
      assertEquals((await run("run", "--detach", "--name", "f", "--mem", "64M")).code, 0);
      await until(state, "f", (v) => !!v.memstamp && v.memstamp.phase.every((p) => p >= 2));
      const w0 = written(await info(state, "f"));
      await sleep(3000);
      const renewed = await info(state, "f");
      assertEquals(renewed.state, "running", "fenced while the lease was renewed");
      assert(written(renewed) > w0, "the guest did not run while the lease was renewed");
    } finally {
      clearInterval(beats);
    }
    const fenced = await until(state, "f", (v) => v.state === "paused");
    assert(fenced.pausedReason?.includes("lease (epoch 3) lapsed"), fenced.pausedReason);
    const before = written(fenced);
    await sleep(1000);
    assertEquals(written(await info(state, "f")), before, "the guest wrote while fenced");
    assertEquals((await run("vm", "resume", "f")).code, 0);
    await sleep(500);
    const after = await info(state, "f");
    assertEquals(after.state, "paused", "an operator's resume ended the fence");
    assertEquals(written(after), before, "the guest ran after an operator's resume");
    const verify = await run("guest", "verify", "f");
    assert(verify.code !== 0 && verify.stderr.includes("fenced"), verify.stderr);
  } finally {
    await run("vm", "stop", "f");
  }
});

Deno.test("a lease file that cannot be read fences the VM, as a lapsed lease would", async () => {
  const state = tempStateDir();
  const run = (...a: string[]) => dcres(["--state-dir", state, ...a], { timeoutMs: 120_000 });
  try {
    writeLease(state, { untilMs: bootTimeMs() + 60_000, epoch: 1 });
    assertEquals((await run("run", "--detach", "--name", "g", "--mem", "64M")).code, 0);
    assertEquals((await info(state, "g")).state, "running");
    Deno.writeTextFileSync(`${state}/${LEASE_FILE}`, '{"v":1,"untilMs":"soon"}');
    const fenced = await until(state, "g", (v) => v.state === "paused");
    assert(fenced.pausedReason?.includes("is not a lease"), fenced.pausedReason);
  } finally {
    await run("vm", "stop", "g");
  }
});
