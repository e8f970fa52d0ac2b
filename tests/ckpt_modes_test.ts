/**
 * Checkpoint and restore on one host, on the machine's accelerator: every mode, eager and lazy, against a busy
 * 2-vCPU memstamp guest with its timer running. The restored memory is compared page by page with
 * the memory at the consistency point, and the guest then verifies itself and keeps running.
 */
import { noKvmReason, perAccel, skipIf } from "./helpers/accel.ts";
import { openAccelerator } from "../src/accel/select.ts";
import { assert, assertEquals } from "./helpers/assert.ts";
import { Machine, type MachineSpec } from "../src/vmm/machine.ts";
import { DirtyTracker } from "../src/memory/dirty_tracker.ts";
import { takeCheckpoint } from "../src/ckpt/save.ts";
import { restoreCheckpoint } from "../src/ckpt/restore.ts";
import type { CheckpointMode } from "../src/ckpt/manifest.ts";
import { crc32 } from "../src/ckpt/format.ts";
import type { GuestMemory } from "../src/memory/guest_memory.ts";
import { CFG, dataRegion, LAYOUT } from "../src/vmm/guests/memstamp/layout.ts";

const dataRegionPages = (memSize: number) => dataRegion(memSize).pages;

const MiB = 1 << 20;
const HZ = 200;
/** The busy guest: 1 GiB on KVM, 128 MiB on the emulated CPU (it stamps ~4,000 pages/s per vCPU). */
const BUSY = perAccel({
  kvm: { mem: 1024 * MiB, ws: 64 * MiB },
  emu: { mem: 128 * MiB, ws: 16 * MiB },
});
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const noIo = { serialOut: () => {} };

/** CRC-32 of every page. */
function pageCrcs(mem: GuestMemory): Uint32Array {
  const v = mem.view();
  const out = new Uint32Array(mem.pages);
  for (let g = 0; g < mem.pages; g++) out[g] = crc32(v.subarray(g * 4096, (g + 1) * 4096));
  return out;
}

function firstDifference(a: Uint32Array, b: Uint32Array): number {
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return i;
  return -1;
}

async function busyGuest(
  memSize: number,
  ws?: number,
): Promise<{ m: Machine; tracker: DirtyTracker }> {
  const spec: MachineSpec = {
    name: "ck",
    guest: "memstamp",
    memSize,
    vcpus: 2,
    memstamp: { pattern: "random", timerHz: HZ, workingSet: ws },
  };
  const m = await Machine.create(spec, noIo);
  const tracker = new DirtyTracker(m.vm.memory.pages, () => m.vm.dirtyBitmap());
  await m.vm.start();
  await m.memstamp!.waitStamped(180_000);
  await sleep(200);
  return { m, tracker };
}

for (const mode of ["stop", "precopy", "cow"] as CheckpointMode[]) {
  Deno.test(`${mode}: ${BUSY.mem / MiB} MiB busy guest restores eagerly and lazily to exactly the consistency point, verifies and keeps running`, async () => {
    const { m, tracker } = await busyGuest(BUSY.mem, BUSY.ws);
    const dir = Deno.makeTempDirSync({ prefix: "dcres-ck-" });
    let atPoint!: Uint32Array;
    let ticksAtPoint!: bigint[];
    let writtenAtPoint!: bigint[];
    try {
      const rep = await takeCheckpoint(m, tracker, {
        dir,
        mode,
        incremental: false,
        compress: false,
        maxDowntimeMs: 50,
        onConsistencyPoint: () => {
          atPoint = pageCrcs(m.vm.memory);
          ticksAtPoint = m.memstamp!.statuses().map((s) => s.ticks);
          writtenAtPoint = m.memstamp!.statuses().map((s) => s.written);
        },
      });
      assertEquals(rep.generation, 1);
      if (mode === "precopy") assert(rep.stats.rounds >= 1);
      await sleep(300);
      const stillRunning = m.memstamp!.statuses();
      assert(
        stillRunning.every((s, i) => s.ticks > ticksAtPoint[i]),
        "the source kept running after the checkpoint",
      );
    } finally {
      await m.vm.stop();
    }
    try {
      // Lazy twice: once with every page installed up front through the pager (to compare them with
      // the consistency point), once live, with the guest's faults served while it runs.
      for (const [lazy, compare] of [[false, true], [true, true], [true, false]]) {
        const r = restoreCheckpoint({ path: dir, lazy, io: noIo });
        if (compare) {
          if (lazy) r.pager!.preload(r.machine.vm.memory.pages);
          const diff = firstDifference(pageCrcs(r.machine.vm.memory), atPoint);
          assertEquals(
            diff,
            -1,
            `page ${diff} differs from the consistency point (${lazy ? "lazy" : "eager"})`,
          );
        }
        const t0 = performance.now();
        await r.machine.vm.start();
        const run = r.pager?.run();
        await sleep(500);
        const v = await r.machine.memstamp!.verify();
        assert(
          v.ok,
          `verify after ${lazy ? "lazy" : "eager"} restore: ${
            JSON.stringify(v.bad, (_, x) => typeof x === "bigint" ? `${x}` : x)
          }`,
        );
        const awayMs = performance.now() - t0;
        const after = r.machine.memstamp!.statuses();
        after.forEach((s, i) =>
          assert(
            s.written > writtenAtPoint[i],
            `vCPU ${i} progress continues from ${writtenAtPoint[i]} (now ${s.written})`,
          )
        );
        const ticks = after.map((s) => s.ticks);
        ticks.forEach((t, i) => {
          assert(
            t > ticksAtPoint[i],
            `vCPU ${i} ticks continue from ${ticksAtPoint[i]} (now ${t})`,
          );
          const max = BigInt(Math.ceil(((awayMs + 2000) / 1000) * HZ));
          assert(
            t - ticksAtPoint[i] <= max,
            `vCPU ${i} ticks jumped by ${t - ticksAtPoint[i]} (> ${max})`,
          );
        });
        if (lazy && !compare) {
          assert(r.pager!.faults > 0, "the live lazy restore served guest faults");
        }
        r.pager?.stop();
        await run;
        await r.machine.vm.stop();
        r.checkpoint.close();
      }
    } finally {
      Deno.removeSync(dir, { recursive: true });
    }
  });
}

/**
 * Waits until every vCPU has written `pages` more pages: three times its working set covers about
 * 95% of it at random, on whatever accelerator (KVM does that in milliseconds, the emulated CPU in
 * about a second).
 */
async function rewritten(m: Machine, pages: number): Promise<void> {
  const start = m.memstamp!.statuses().map((s) => s.written);
  const deadline = performance.now() + 60_000;
  while (!m.memstamp!.statuses().every((s, i) => s.written - start[i] >= BigInt(pages))) {
    assert(performance.now() < deadline, `the guest did not write ${pages} pages per vCPU in 60 s`);
    await sleep(20);
  }
}

Deno.test("an incremental chain of five stores about five working sets beyond the base, and restores exactly as its merge", async () => {
  const ws = 8 * MiB; // per vCPU: 16 MiB written between checkpoints
  const { m, tracker } = await busyGuest(256 * MiB, ws);
  const dir = Deno.makeTempDirSync({ prefix: "dcres-chain-" });
  try {
    const base = await takeCheckpoint(m, tracker, {
      dir,
      mode: "stop",
      incremental: false,
      compress: false,
      maxDowntimeMs: 50,
    });
    let incBytes = 0;
    let incPages = 0;
    for (let i = 0; i < 5; i++) {
      await rewritten(m, 3 * (ws / 4096));
      const r = await takeCheckpoint(m, tracker, {
        dir,
        mode: i % 2 ? "cow" : "precopy",
        incremental: true,
        compress: false,
        maxDowntimeMs: 50,
      });
      assertEquals(r.parent, base.generation + i);
      incBytes += r.stats.bytesWritten;
      incPages += r.stats.pagesSaved;
    }
    await m.vm.stop();
    const wsAll = 2 * ws;
    // Distinct pages stored: about five working sets. Bytes also count precopy's re-saved copies of
    // pages the writer kept dirtying, still far from five guests.
    const stored = incPages * 4096;
    assert(
      stored >= 5 * wsAll * 0.9,
      `chain stored ${stored} bytes, five working sets are ${5 * wsAll}`,
    );
    assert(
      stored < 5 * wsAll * 1.5,
      `chain stored ${stored} bytes: about five working sets (${5 * wsAll})`,
    );
    assert(
      incBytes < 5 * 256 * MiB / 4,
      `chain wrote ${incBytes} bytes, not five guests (${5 * 256 * MiB})`,
    );
    const chain = restoreCheckpoint({ path: dir, lazy: false, io: noIo });
    const chainCrcs = pageCrcs(chain.machine.vm.memory);
    await chain.machine.vm.stop();
    chain.checkpoint.close();
    const { mergeChain } = await import("../src/ckpt/merge.ts");
    const merged = await mergeChain(dir, dir);
    assertEquals(merged.manifest.parent, null);
    const full = restoreCheckpoint({ path: merged.dir, lazy: false, io: noIo });
    assertEquals(
      firstDifference(pageCrcs(full.machine.vm.memory), chainCrcs),
      -1,
      "merge equals chain",
    );
    await full.machine.vm.start();
    await sleep(200);
    assert((await full.machine.memstamp!.verify()).ok);
    await full.machine.vm.stop();
    full.checkpoint.close();
  } finally {
    if (!m.vm.isStopped) await m.vm.stop();
    Deno.removeSync(dir, { recursive: true });
  }
});

Deno.test("an incremental checkpoint after guest verify keeps the new command sequence: the restored guest's next verify really runs", async () => {
  const { m, tracker } = await busyGuest(perAccel({ kvm: 256 * MiB, emu: 64 * MiB }), 4 * MiB);
  const dir = Deno.makeTempDirSync({ prefix: "dcres-ck-vmmwrite-" });
  const cmdSeq = (mem: GuestMemory) => mem.u64(LAYOUT.CONFIG, 16)[CFG.CMDSEQ / 8];
  const opts = { dir, mode: "stop" as CheckpointMode, compress: false, maxDowntimeMs: 50 };
  let seqAtIncremental: bigint;
  try {
    await takeCheckpoint(m, tracker, { ...opts, incremental: false });
    const first = await m.memstamp!.verify();
    assert(first.ok, "the source verifies");
    seqAtIncremental = cmdSeq(m.vm.memory);
    await takeCheckpoint(m, tracker, { ...opts, incremental: true });
  } finally {
    await m.vm.stop();
  }
  try {
    const r = restoreCheckpoint({ path: dir, lazy: false, io: noIo });
    try {
      assertEquals(cmdSeq(r.machine.vm.memory), seqAtIncremental, "the VMM's write was saved");
      await r.machine.vm.start();
      const v = await r.machine.memstamp!.verify();
      assert(v.ok, `verify after restore: ${JSON.stringify(v.bad, (_, x) => `${x}`)}`);
      assertEquals(cmdSeq(r.machine.vm.memory), seqAtIncremental + 1n, "the command advanced");
      assertEquals(v.pages, dataRegionPages(r.machine.vm.memory.size), "every page was verified");
    } finally {
      await r.machine.vm.stop();
      r.checkpoint.close();
    }
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});

const CROSS = "a checkpoint taken on one accelerator restores on the other, each way, and verifies";
Deno.test({ name: CROSS, ...skipIf(noKvmReason, CROSS) }, async () => {
  const kvm = openAccelerator("kvm"), emu = openAccelerator("emu");
  for (const [from, to] of [[emu, kvm], [kvm, emu]]) {
    const spec: MachineSpec = {
      name: `cross-${from.kind}`,
      guest: "memstamp",
      memSize: 64 * MiB,
      vcpus: 2,
      memstamp: { pattern: "random", timerHz: HZ, workingSet: 4 * MiB },
    };
    const m = await Machine.create(spec, noIo, from);
    const tracker = new DirtyTracker(m.vm.memory.pages, () => m.vm.dirtyBitmap());
    const dir = Deno.makeTempDirSync({ prefix: "dcres-cross-" });
    let ticksAtPoint!: bigint[];
    try {
      await m.vm.start();
      await m.memstamp!.waitStamped(180_000);
      await takeCheckpoint(m, tracker, {
        dir,
        mode: "stop",
        incremental: false,
        compress: false,
        maxDowntimeMs: 50,
        onConsistencyPoint: () => (ticksAtPoint = m.memstamp!.statuses().map((s) => s.ticks)),
      });
    } finally {
      await m.vm.stop();
    }
    const r = restoreCheckpoint({ path: dir, lazy: false, io: noIo, accel: to });
    try {
      assertEquals(r.machine.vm.accelKind, to.kind);
      await r.machine.vm.start();
      await sleep(500);
      const v = await r.machine.memstamp!.verify();
      assert(v.ok, `${from.kind} -> ${to.kind}: ${JSON.stringify(v.bad, (_, x) => `${x}`)}`);
      r.machine.memstamp!.statuses().forEach((s, i) =>
        assert(s.ticks > ticksAtPoint[i], `${from.kind} -> ${to.kind}: vCPU ${i} ticks continue`)
      );
    } finally {
      await r.machine.vm.stop();
      r.checkpoint.close();
      Deno.removeSync(dir, { recursive: true });
    }
  }
});
