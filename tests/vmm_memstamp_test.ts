import { assert, assertEquals } from "./helpers/assert.ts";
import { Machine, type MachineSpec } from "../src/vmm/machine.ts";
import { dataRegion } from "../src/vmm/guests/memstamp/layout.ts";
import { SYMBOLS } from "../src/vmm/guests/memstamp/code.ts";
import { perAccel, TEST_ACCEL } from "./helpers/accel.ts";
import { within } from "../src/rpc/deadline.ts";

const GiB = 1024 ** 3;
/** 1 GiB on KVM; 512 MiB on the emulated CPU, which stamps about 4,000 pages/s per vCPU. */
const SIZE = perAccel({ kvm: GiB, emu: GiB / 2 });
const SIZE_NAME = `${SIZE / 2 ** 20} MiB on ${TEST_ACCEL ?? "no accelerator"}`;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const noIo = { serialOut: () => {} };

function spec(memSize: number, vcpus: number, name = "t"): MachineSpec {
  return { name, guest: "memstamp", memSize, vcpus, memstamp: { pattern: "random", timerHz: 250 } };
}

async function running(s: MachineSpec): Promise<Machine> {
  const m = await Machine.create(s, noIo);
  await m.vm.start();
  await m.memstamp!.waitStamped(180_000);
  return m;
}

const totalTicks = (m: Machine) => m.memstamp!.statuses().reduce((a, s) => a + s.ticks, 0n);
const totalWritten = (m: Machine) => m.memstamp!.statuses().reduce((a, s) => a + s.written, 0n);

Deno.test(`memstamp ${SIZE_NAME} with 2 vCPUs survives 100 pause/resume cycles: every page verifies and ticks keep rising`, async () => {
  const m = await running(spec(SIZE, 2));
  try {
    await survivesPauseCycles(m);
  } finally {
    await m.vm.stop();
  }
});

/** 100 pause/resume cycles of a busy guest, then every page verifies and ticks and writes rose. */
async function survivesPauseCycles(m: Machine): Promise<void> {
  const ticks0 = totalTicks(m);
  const written0 = totalWritten(m);
  const pauses: number[] = [];
  for (let i = 0; i < 100; i++) {
    pauses.push(await m.vm.pause());
    const frozen = totalWritten(m);
    await sleep(2);
    assertEquals(totalWritten(m), frozen, "a paused guest writes nothing");
    m.vm.resume();
    await sleep(3);
  }
  await sleep(100);
  const v = await m.memstamp!.verify();
  assert(
    v.ok,
    `verify failed: ${JSON.stringify(v.bad, (_, x) => typeof x === "bigint" ? `${x}` : x)}`,
  );
  assertEquals(v.pages, dataRegion(SIZE).pages);
  assert(totalTicks(m) > ticks0, "the LAPIC timer kept ticking");
  assert(totalWritten(m) > written0, "the writer kept writing");
  for (const s of m.memstamp!.statuses()) {
    assert(s.ticks > 0n, "every vCPU takes timer interrupts");
  }
  pauses.sort((a, b) => a - b);
  assert(pauses[98] < 100, `pause p99 ${pauses[98].toFixed(2)} ms`);
}

Deno.test(`a ${SIZE_NAME} VM captured and restored into a new VM continues where it stopped and survives 100 pause/resume cycles`, async () => {
  const m = await running(spec(SIZE, 2));
  await sleep(300);
  await m.vm.pause();
  const nonce = m.memstamp!.nonce;
  const before = m.memstamp!.statuses();
  const state = m.save();
  const memory = await m.vm.detachMemory();
  const r = Machine.restore({ memory, io: noIo }, state);
  try {
    const restored = r.memstamp!.statuses();
    assertEquals(restored.map((s) => s.written), before.map((s) => s.written));
    await r.vm.start();
    await sleep(500);
    const v = await r.memstamp!.verify();
    assert(
      v.ok,
      `verify after restore failed: ${
        JSON.stringify(v.bad, (_, x) => typeof x === "bigint" ? `${x}` : x)
      }`,
    );
    const after = r.memstamp!.statuses();
    after.forEach((s, i) => {
      assert(
        s.ticks > before[i].ticks,
        `vCPU ${i} ticks continue from ${before[i].ticks} (now ${s.ticks})`,
      );
      assert(s.written > before[i].written, `vCPU ${i} writer continues`);
    });
    assertEquals(r.memstamp!.nonce, nonce, "same boot: the RAM-only nonce survived");
    await survivesPauseCycles(r);
  } finally {
    await r.vm.stop();
    memory.close();
  }
});

Deno.test("verification names a torn page and a stale page", async () => {
  const m = await running({ ...spec(64 << 20, 1), memstamp: { pattern: "seq", workingSet: 4096 } });
  try {
    const { baseGfn, pages } = dataRegion(64 << 20);
    const victim = baseGfn + pages - 7; // outside the one-page working set
    await m.vm.pause();
    const page = m.vm.memory.view(victim * 4096, 4096);
    const saved = page.slice();
    page[2000] ^= 0x5a;
    m.vm.resume();
    let v = await m.memstamp!.verify();
    assertEquals(v.ok, false);
    assertEquals(v.bad?.gfn, victim);
    assertEquals(v.bad?.reason, "torn");

    await m.vm.pause();
    page.set(saved);
    const table = m.vm.memory.view(0x100000 + (victim - baseGfn) * 4, 4);
    table[0] += 1; // the guest believes a newer version was written
    m.vm.resume();
    v = await m.memstamp!.verify();
    assertEquals(v.bad?.gfn, victim);
    assertEquals(v.bad?.reason, "stale-version");
  } finally {
    await m.vm.stop();
  }
});

Deno.test("a guest exception stops the VM with its vector and never takes the VMM down", async () => {
  const m = await Machine.create(spec(16 * 2 ** 20, 1, "fault"), noIo);
  // ud2 at the ring-3 entry: #UD (vector 6) on the first instruction.
  m.vm.memory.view().set([0x0f, 0x0b], SYMBOLS.user_entry);
  await m.vm.start();
  const exit = await Promise.race([
    m.vm.exited,
    sleep(30_000).then(() => ({ reason: "timeout", detail: "no exit within 30 s" })),
  ]);
  await m.vm.stop();
  assertEquals(exit.reason, "error", exit.detail);
  assert(exit.detail.includes("vector 6"), exit.detail);
});

Deno.test("a stop that comes before or while the vCPUs start (a signal during boot) ends the VM instead of hanging it", async () => {
  const early = await Machine.create(spec(64 * 2 ** 20, 2, "early"), noIo);
  await early.vm.stop({ reason: "stopped", detail: "interrupted by signal" });
  await bounded(early.vm.start(), "start after a stop");
  assertEquals((await early.vm.exited).detail, "interrupted by signal");

  const racing = await Machine.create(spec(64 * 2 ** 20, 2, "racing"), noIo);
  const started = racing.vm.start();
  await bounded(racing.vm.stop({ reason: "stopped", detail: "interrupted by signal" }), "stop");
  await bounded(started, "start under a stop");
  assertEquals((await racing.vm.exited).detail, "interrupted by signal");
  assert(racing.vm.isStopped);
});

/** `p`, or a failure naming `what` when it hangs past 30 s. */
async function bounded<T>(p: Promise<T>, what: string): Promise<T> {
  const r = await within(p.then((v) => ({ v })), 30_000);
  if (!r) throw new Error(`${what} hung`);
  return r.v;
}
