/**
 * Checkpoint benchmark: a memstamp guest (every page stamped with pseudo-random, incompressible
 * content; 2 GiB on KVM, 256 MiB on the emulated CPU unless DCRES_BENCH_SIZE=full) checkpointed in
 * stop, precopy and cow mode, restored eagerly and lazily (each restore verified by the guest),
 * against two references measured in the same run on the same sizes: a raw sequential write +
 * fdatasync of the same number of bytes, and QEMU's migrate-to-file checkpoint and `-incoming`
 * restore of a guest of the same size holding the same amount of random data (QEMU on KVM when
 * dcres runs on KVM, on TCG when dcres runs on the emulated CPU).
 */
import { Machine } from "../../src/vmm/machine.ts";
import { DirtyTracker } from "../../src/memory/dirty_tracker.ts";
import type { CheckpointMode } from "../../src/ckpt/manifest.ts";
import { takeCheckpoint } from "../../src/ckpt/save.ts";
import type { CheckpointReport } from "../../src/ckpt/transaction.ts";
import { restoreCheckpoint } from "../../src/ckpt/restore.ts";
import type { VerifyResult } from "../../src/vmm/guests/memstamp/memstamp.ts";
import {
  evictFromPageCache,
  filesystemOf,
  freeBytes,
  randomBytes,
  type RawRead,
  rawRead,
  type RawWrite,
  rawWrite,
  treeBytes,
} from "./disk.ts";
import { type QemuReference, qemuReference } from "./qemu.ts";
import { BenchAccel } from "./accel.ts";
import { line, ms } from "./stats.ts";

const sleep = (t: number) => new Promise((r) => setTimeout(r, t));
const MiB = 1 << 20;
const GiB = 1 << 30;

const VCPUS = 2;
const MAX_DOWNTIME_MS = 50;
const quiet = { serialOut: () => {} };

const mibs = (bytes: number, msec: number) => bytes / MiB / (msec / 1000);
const fmtMibs = (x: number) => `${x.toFixed(0)} MiB/s`;
const fmtMiB = (b: number) => `${(b / MiB).toFixed(1)} MiB`;

/** One checkpoint mode's figures. */
interface ModeResult {
  mode: CheckpointMode;
  checkpointMs: number;
  mibPerSec: number;
  downtimeMs: number;
  sizeBytes: number;
  stats: CheckpointReport["stats"];
  guestPagesWrittenDuring: number;
  eagerRestore: RestoreResult;
}

/** One restore's figures. */
interface RestoreResult {
  lazy: boolean;
  from: "disk" | "page cache";
  resumeMs: number;
  residentMs: number;
  faults?: number;
  verifyMs: number;
  verify: VerifyResult;
}

function guestWritten(m: Machine): number {
  return Number(m.memstamp!.statuses().reduce((a, s) => a + s.written, 0n));
}

/** Restores the latest checkpoint in `store`, runs it until resident, verifies every page, stops it. */
async function restoreAndVerify(
  ba: BenchAccel,
  store: string,
  lazy: boolean,
  fromDisk: boolean,
): Promise<RestoreResult> {
  if (fromDisk) { for (const f of fragmentFiles(store)) evictFromPageCache(f); }
  const t0 = performance.now();
  const r = restoreCheckpoint({ path: store, lazy, io: quiet, accel: ba.accel });
  await r.machine.vm.start();
  const pr = r.pager?.run();
  const resumeMs = performance.now() - t0;
  let residentMs = resumeMs;
  if (r.pager) {
    await r.pager.done;
    residentMs = performance.now() - t0;
  }
  await pr;
  const tv = performance.now();
  const verify = await r.machine.memstamp!.verify(600_000);
  const verifyMs = performance.now() - tv;
  await r.machine.vm.stop();
  r.machine.vm.memory.close();
  r.checkpoint.close();
  return {
    lazy,
    from: fromDisk ? "disk" : "page cache",
    resumeMs,
    residentMs,
    faults: r.pager?.faults,
    verifyMs,
    verify,
  };
}

/** Bytes of guest RAM in non-zero pages: what a full checkpoint stores (the VM must be paused). */
function nonZeroBytes(m: Machine): number {
  const v = m.vm.memory.view();
  const words = new Uint32Array(v.buffer, v.byteOffset, v.byteLength >>> 2);
  let n = 0;
  for (let p = 0; p < words.length; p += 1024) {
    for (let i = p; i < p + 1024; i++) {
      if (words[i] !== 0) {
        n++;
        break;
      }
    }
  }
  return n * 4096;
}

function fragmentFiles(dir: string): string[] {
  const out: string[] = [];
  for (const e of Deno.readDirSync(dir)) {
    const p = `${dir}/${e.name}`;
    if (e.isDirectory) out.push(...fragmentFiles(p));
    else if (e.isFile && e.name.endsWith(".frag")) out.push(p);
  }
  return out;
}

function verifyText(v: VerifyResult): string {
  return v.ok
    ? `ok (${v.pages} pages)`
    : `FAILED: gfn ${v.bad?.gfn} ${v.bad?.reason} (vcpu ${v.bad?.vcpu})`;
}

/** Runs the checkpoint benchmark and returns its JSON report. */
export async function benchCheckpoint(): Promise<unknown> {
  const root = Deno.makeTempDirSync({ prefix: "dcres-bench-ckpt-" });
  try {
    return await run(root);
  } finally {
    Deno.removeSync(root, { recursive: true });
  }
}

async function run(root: string): Promise<unknown> {
  const ba = BenchAccel.open();
  const MEM_SIZE = ba.pick({ full: 2 * GiB, emu: 256 * MiB });
  // Per vCPU, rewritten at random while live modes run; scaled with the guest.
  const WORKING_SET = ba.pick({ full: 64 * MiB, emu: 8 * MiB });
  const qemuAccel = ba.kind === "kvm" ? "kvm" : "tcg";
  const tag = (label: string) => ba.cpu(label);
  const qtag = (label: string) => `${label} [qemu ${qemuAccel}]`;
  // Peak use: one checkpoint + the random fill file, or the fill file + QEMU's migration file.
  const need = 2 * MEM_SIZE + 512 * MiB;
  const free = freeBytes(root);
  if (free < need) {
    throw new Error(
      `not enough disk space in ${root} (${filesystemOf(root)}): ${fmtMiB(free)} free, the ` +
        `benchmark needs ${fmtMiB(need)} (a ${MEM_SIZE / GiB} GiB checkpoint plus as many bytes ` +
        `of random data for the disk and QEMU references)`,
    );
  }
  const fs = filesystemOf(root);
  console.log(
    `dcres bench checkpoint: ${fmtMiB(MEM_SIZE)} memstamp guest, ${VCPUS} vCPUs, ` +
      `files under ${root} (${fs}, ${fmtMiB(free)} free); ${ba.describe()}`,
  );

  const m = await Machine.create(
    {
      name: "bench-ckpt",
      guest: "memstamp",
      memSize: MEM_SIZE,
      vcpus: VCPUS,
      memstamp: { pattern: "random", workingSet: WORKING_SET },
    },
    quiet,
    ba.accel,
  );
  const tracker = new DirtyTracker(m.vm.memory.pages, () => m.vm.dirtyBitmap());
  const ts = performance.now();
  await m.vm.start();
  await m.memstamp!.waitStamped(900_000);
  const stampMs = performance.now() - ts;
  const stamped = Number(m.memstamp!.statuses().reduce((a, s) => a + s.stamped, 0n));
  console.log(
    `guest filled: ${stamped} pages (${fmtMiB(stamped * 4096)}) of pseudo-random content ` +
      `in ${(stampMs / 1000).toFixed(1)} s on ${ba.kind} ` +
      `(${((100 * stamped * 4096) / MEM_SIZE).toFixed(0)}% of guest RAM); ` +
      `live modes rewrite ${WORKING_SET / MiB} MiB per vCPU at random`,
  );

  // Reference 1 source: random bytes, generated before anything is timed.
  const fill = randomBytes(MEM_SIZE);
  const fillFile = `${root}/random.bin`;
  await m.vm.pause();
  const before = rawWrite(`${root}/raw-before.bin`, fill, nonZeroBytes(m));
  Deno.removeSync(before.path);
  m.vm.resume();

  const modes: ModeResult[] = [];
  let lazy: RestoreResult | undefined;
  let after: RawWrite | undefined;
  let read: RawRead | undefined;
  for (const mode of ["stop", "precopy", "cow"] as CheckpointMode[]) {
    const store = `${root}/store-${mode}`;
    if (m.vm.isStopped) throw new Error("the source VM stopped");
    await sleep(500); // let the writer run at full speed before each checkpoint
    const w0 = guestWritten(m);
    const rep = await takeCheckpoint(m, tracker, {
      dir: store,
      mode,
      incremental: false,
      compress: false,
      maxDowntimeMs: MAX_DOWNTIME_MS,
    });
    const wDuring = guestWritten(m) - w0;
    // Quiet source while the references and restores run: they get the two cores to themselves.
    await m.vm.pause();
    const s = rep.stats;
    if (mode === "stop") {
      // Reference 1 again, now with exactly the page bytes the checkpoint wrote; kept for QEMU.
      after = rawWrite(fillFile, fill, s.bytesWritten);
      evictFromPageCache(fillFile);
      read = rawRead(fillFile);
    }
    const eager = await restoreAndVerify(ba, store, false, true);
    if (mode === "stop") lazy = await restoreAndVerify(ba, store, true, true);
    modes.push({
      mode,
      checkpointMs: s.totalMs,
      mibPerSec: mibs(s.bytesWritten, s.totalMs),
      downtimeMs: s.downtimeMs,
      sizeBytes: treeBytes(store),
      stats: s,
      guestPagesWrittenDuring: wDuring,
      eagerRestore: eager,
    });
    Deno.removeSync(store, { recursive: true });
    m.vm.resume();
  }
  await m.vm.stop();

  // Reference 2: QEMU, same RAM size, the same random bytes loaded at 1 MiB (as many as fit).
  const qemuFill = Math.min(after!.bytes, MEM_SIZE - MiB);
  if (qemuFill < after!.bytes) Deno.truncateSync(fillFile, qemuFill);
  const qemu: QemuReference = await qemuReference({
    dir: root,
    memMiB: MEM_SIZE / MiB,
    fillFile,
    evict: evictFromPageCache,
    accel: qemuAccel,
  });
  Deno.removeSync(fillFile);
  const raw = {
    bytes: after!.bytes,
    mibPerSec: (before.mibPerSec + after!.mibPerSec) / 2,
    before,
    after: after!,
    read: read!,
  };

  // Report.
  const stop = modes[0];
  console.log("");
  line("raw write + fdatasync, before (reference 1)", fmtMibs(before.mibPerSec), {
    x: before.mibPerSec / raw.mibPerSec,
    of: `their mean; ${fmtMiB(before.bytes)} in ${ms(before.totalMs)} (sync ${ms(before.syncMs)})`,
  });
  line("raw write + fdatasync, after stop ckpt", fmtMibs(after!.mibPerSec), {
    x: after!.mibPerSec / raw.mibPerSec,
    of: `their mean; ${fmtMiB(after!.bytes)} in ${ms(after!.totalMs)} (sync ${ms(after!.syncMs)})`,
  });
  line("raw sequential read, page cache dropped", fmtMibs(read!.mibPerSec), {
    x: read!.mibPerSec / raw.mibPerSec,
    of: `raw write (${fmtMiB(read!.bytes)} in ${ms(read!.totalMs)})`,
  });
  if (qemu.ok) {
    console.log(
      `QEMU: ${qemu.version}; ${qemu.accelNote}; "file:" URI: ${qemu.fileUri}; used ${qemu.uri}; ` +
        `${fmtMiB(qemu.fillBytes)} random at 1 MiB; ${qemu.samplesChecked} RAM words checked ` +
        `against the file before and after`,
    );
    line(qtag("QEMU migrate-to-file (reference 2)"), ms(qemu.checkpointMs), {
      x: qemu.mibPerSec / raw.mibPerSec,
      of: `raw disk (${fmtMibs(qemu.mibPerSec)}, ${fmtMiB(qemu.fileBytes)}; ` +
        `migrate completed at ${ms(qemu.migrateMs)}, then cat + fdatasync)`,
    });
    line(qtag("QEMU -incoming restore (reference 2)"), ms(qemu.restoreMs), {
      x: qemu.restoreMs / qemu.checkpointMs,
      of: `its checkpoint (ready as "${qemu.restoredStatus}", file read from ${qemu.restoreFrom})`,
    });
  } else {
    console.log(`QEMU reference skipped: ${qemu.reason}`);
  }
  for (const r of modes) {
    line(tag(`${r.mode} checkpoint`), ms(r.checkpointMs), {
      x: r.mibPerSec / raw.mibPerSec,
      of: `raw disk throughput (${fmtMibs(r.mibPerSec)})`,
    });
    if (qemu.ok) {
      line(tag(`  ${r.mode} time vs QEMU`), ms(r.checkpointMs), {
        x: r.checkpointMs / qemu.checkpointMs,
        of: "QEMU's checkpoint time (lower is better)",
      });
    }
    if (r.mode === "stop") {
      const rest = r.checkpointMs - r.downtimeMs;
      line(tag("  stop: after resume (index, sync, manifest)"), ms(rest), {
        x: rest / r.checkpointMs,
        of: "checkpoint time",
      });
    }
    line(tag(`  ${r.mode} downtime`), ms(r.downtimeMs), {
      x: r.downtimeMs / r.checkpointMs,
      of:
        `checkpoint time (rounds ${r.stats.rounds}, pages saved twice ${r.stats.pagesSavedTwice})`,
    });
    line(`  ${r.mode} size`, fmtMiB(r.sizeBytes), {
      x: r.sizeBytes / MEM_SIZE,
      of: `guest RAM (${r.stats.zeroPages} zero pages not stored)`,
    });
    const e = r.eagerRestore;
    line(tag(`  eager restore of ${r.mode} (from ${e.from})`), ms(e.resumeMs), {
      x: qemu.ok ? e.resumeMs / qemu.restoreMs : e.resumeMs / r.checkpointMs,
      of: qemu.ok ? "QEMU's restore time" : "checkpoint time",
    });
    if (r.mode === "stop") {
      const rate = mibs(r.sizeBytes, e.resumeMs);
      line(tag("  eager restore of stop, throughput"), fmtMibs(rate), {
        x: rate / read!.mibPerSec,
        of: "raw sequential read",
      });
    }
    console.log(`    verify [${ba.kind}]: ${verifyText(e.verify)} in ${ms(e.verifyMs)}`);
  }
  if (lazy) {
    line(tag(`lazy restore of stop, to resume (from ${lazy.from})`), ms(lazy.resumeMs), {
      x: lazy.resumeMs / stop.eagerRestore.resumeMs,
      of: "eager restore",
    });
    line(tag("  lazy restore, until fully resident"), ms(lazy.residentMs), {
      x: lazy.residentMs / stop.eagerRestore.resumeMs,
      of: `eager restore (${lazy.faults} faults served)`,
    });
    if (qemu.ok) {
      line(tag("  lazy restore to resume vs QEMU"), ms(lazy.resumeMs), {
        x: lazy.resumeMs / qemu.restoreMs,
        of: "QEMU's restore time",
      });
    }
    console.log(`    verify [${ba.kind}]: ${verifyText(lazy.verify)} in ${ms(lazy.verifyMs)}`);
  }
  const ratio = stop.mibPerSec / raw.mibPerSec;
  console.log(
    `\nstop-mode throughput [${ba.kind}] is ${(ratio * 100).toFixed(0)}% of raw disk ` +
      `(aim: >= 80%)` +
      (qemu.ok
        ? `; dcres on ${ba.kind} / QEMU on ${qemuAccel} time: stop checkpoint ${
          (stop.checkpointMs / qemu.checkpointMs).toFixed(2)
        }x, eager restore ${(stop.eagerRestore.resumeMs / qemu.restoreMs).toFixed(2)}x, ` +
          `lazy restore to resume ${(lazy!.resumeMs / qemu.restoreMs).toFixed(2)}x ` +
          `(below 1 means dcres is faster)`
        : ""),
  );
  const allOk = modes.every((r) => r.eagerRestore.verify.ok) && (lazy?.verify.ok ?? false);
  if (!allOk) console.log("A RESTORE DID NOT VERIFY: the figures above are not valid");

  return {
    bench: "checkpoint",
    accel: ba.info,
    qemuAccel,
    date: new Date().toISOString(),
    guest: {
      memBytes: MEM_SIZE,
      vcpus: VCPUS,
      stampedPages: stamped,
      fill: "memstamp: every data page pseudo-random (xorshift stream), incompressible",
      workingSetPerVcpu: WORKING_SET,
      maxDowntimeMs: MAX_DOWNTIME_MS,
    },
    filesystem: fs,
    rawDisk: raw,
    qemuFillBytes: qemuFill,
    modes,
    lazyRestore: lazy,
    qemu,
    ratios: {
      stopThroughputVsRawDisk: ratio,
      stopCheckpointTimeVsQemu: qemu.ok ? stop.checkpointMs / qemu.checkpointMs : null,
      eagerRestoreTimeVsQemu: qemu.ok ? stop.eagerRestore.resumeMs / qemu.restoreMs : null,
      lazyResumeTimeVsQemu: qemu.ok && lazy ? lazy.resumeMs / qemu.restoreMs : null,
    },
    allRestoresVerified: allOk,
  };
}
