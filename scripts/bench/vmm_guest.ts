/**
 * The guest-side figures of `deno task bench vmm` on one accelerator: memstamp's page write rate
 * against raw host writes of 4 KiB pages in the same run, pause/resume latency of a busy 2-vCPU
 * guest, whole-VM state capture and re-install, and the cost of one port I/O exit derived from the
 * write rate with an OUT after every page against one with almost none.
 */
import type { Accelerator } from "../../src/accel/accel.ts";
import { Machine, type MachineSpec } from "../../src/vmm/machine.ts";
import { CFG, LAYOUT } from "../../src/vmm/guests/memstamp/layout.ts";
import { percentile } from "./stats.ts";

const sleep = (t: number) => new Promise((r) => setTimeout(r, t));
const PAGE = 4096;
const quiet = { serialOut: () => {} };
const nap = new Int32Array(new SharedArrayBuffer(4));

/** Pause/resume latency is aimed below this at p99. */
export const PAUSE_AIM_MS = 10;

/** Pages written so far by every vCPU of `m`. */
function written(m: Machine): number {
  return Number(m.memstamp!.statuses().reduce((a, s) => a + s.written, 0n));
}

/** Raw host writes of 4 KiB pages from one JavaScript thread, at random over a buffer. */
export interface HostPageWrites {
  /** Buffer the pages were written in (the guest's working set per vCPU). */
  bufferBytes: number;
  /** `Uint8Array.fill` of a whole page (memset), pages per second. */
  memsetPagesPerSec: number;
  /** `Uint8Array.set` of a random-content page (memcpy), pages per second. */
  memcpyPagesPerSec: number;
}

/**
 * Writes 4 KiB pages of a `bytes` buffer (touched first) in random order for about `ms` each with
 * memset and with memcpy from random-content pages; the reference for the guest's write rate.
 */
export function hostPageWrites(bytes: number, ms: number): HostPageWrites {
  const pages = Math.max(1, Math.floor(bytes / PAGE));
  const buf = new Uint8Array(pages * PAGE);
  buf.fill(1);
  const src = new Uint8Array(16 * PAGE);
  for (let i = 0; i < src.length; i += 65536) crypto.getRandomValues(src.subarray(i, i + 65536));
  const order = new Uint32Array(1 << 16);
  for (let i = 0; i < order.length; i++) order[i] = Math.floor(Math.random() * pages);
  const timed = (write: (page: number, i: number) => void): number => {
    let n = 0;
    const t0 = performance.now();
    let elapsed = 0;
    while (elapsed < ms) {
      for (let i = 0; i < 1024; i++, n++) write(order[n & 0xffff] * PAGE, n);
      elapsed = performance.now() - t0;
    }
    return n / (elapsed / 1000);
  };
  const memset = timed((at, i) => buf.fill(i & 0xff, at, at + PAGE));
  const memcpy = timed((at, i) => {
    const s = (i & 15) * PAGE;
    buf.set(src.subarray(s, s + PAGE), at);
  });
  return { bufferBytes: buf.length, memsetPagesPerSec: memset, memcpyPagesPerSec: memcpy };
}

/** The guest's page write rate over a window. */
export interface WriteRate {
  /** Pages rewritten per second per vCPU. */
  pagesPerSecPerVcpu: number;
  /** vCPUs writing. */
  vcpus: number;
  /** Window length. */
  windowMs: number;
}

/** memstamp pages rewritten per second per vCPU over `windowMs` of a running guest. */
export async function writeRate(m: Machine, windowMs: number): Promise<WriteRate> {
  const w0 = written(m), t0 = performance.now();
  await sleep(windowMs);
  const pages = written(m) - w0, secs = (performance.now() - t0) / 1000;
  return { pagesPerSecPerVcpu: pages / m.spec.vcpus / secs, vcpus: m.spec.vcpus, windowMs };
}

/** A busy memstamp guest's figures. */
export interface BusyGuest {
  /** Time of the initial stamping pass. */
  stampMs: number;
  /** Its write rate before the cycles. */
  rate: WriteRate;
  /** The host reference, measured while the guest was paused. */
  host: HostPageWrites;
  /** Pause latency per cycle (ms). */
  pause: number[];
  /** Resume to the guest's first page write, per cycle (ms). */
  resume: number[];
  /** Whole-VM state capture (ms). */
  captureMs: number;
  /** Re-install of that state into a new VM (ms). */
  reinstallMs: number;
  /** Whether the guest verified every page after the re-install. */
  verifiedAfterRestore: boolean;
}

/**
 * Boots a memstamp guest of `spec.memSize` on `accel`, measures its write rate over `windowMs` and
 * the host reference, then `cycles` pause/resume cycles, a state capture and its re-install into a
 * new VM (verified by the guest).
 */
export async function busyGuest(
  accel: Accelerator,
  spec: Pick<MachineSpec, "memSize" | "vcpus">,
  cycles: number,
  windowMs: number,
): Promise<BusyGuest> {
  const m = await Machine.create(
    {
      name: "bench",
      guest: "memstamp",
      ...spec,
      memstamp: { pattern: "random" },
    },
    quiet,
    accel,
  );
  try {
    const ts = performance.now();
    await m.vm.start();
    await m.memstamp!.waitStamped(600_000);
    const stampMs = performance.now() - ts;
    const rate = await writeRate(m, windowMs);
    await m.vm.pause();
    const share = Number(m.memstamp!.status(0).count) * PAGE;
    const host = hostPageWrites(Math.min(share, 256 << 20), Math.min(1000, windowMs / 2));
    m.vm.resume();
    await sleep(200);
    const pause: number[] = [];
    const resume: number[] = [];
    for (let i = 0; i < cycles; i++) {
      pause.push(await m.vm.pause());
      const w0 = written(m);
      const t0 = performance.now();
      m.vm.resume();
      // Poll for the first write after resume, napping 20 us between reads: a spinning VMM thread
      // would take a core from the vCPUs on a small host.
      while (written(m) === w0 && performance.now() - t0 < 1000) Atomics.wait(nap, 0, 0, 0.02);
      resume.push(performance.now() - t0);
      await sleep(2);
    }
    await m.vm.pause();
    const tc = performance.now();
    const state = m.save();
    const captureMs = performance.now() - tc;
    const memory = await m.vm.detachMemory();
    const tr = performance.now();
    const r = Machine.restore({ memory, io: quiet, accel }, state);
    const reinstallMs = performance.now() - tr;
    await r.vm.start();
    await sleep(200);
    const ok = (await r.memstamp!.verify(600_000)).ok;
    await r.vm.stop();
    memory.close();
    return {
      stampMs,
      rate,
      host,
      pause,
      resume,
      captureMs,
      reinstallMs,
      verifiedAfterRestore: ok,
    };
  } finally {
    if (!m.vm.isStopped) await m.vm.stop().catch(() => {});
  }
}

/** Percentiles of a series of latencies. */
export function p50p99(xs: number[]): { p50: number; p99: number; max: number } {
  return { p50: percentile(xs, 50), p99: percentile(xs, 99), max: Math.max(...xs) };
}

/** One report interval's totals over its windows. */
interface IntervalTotals {
  /** Pages between OUTs. */
  reportInterval: number;
  /** Pages written in its windows. */
  pages: number;
  /** Seconds of its windows. */
  secs: number;
  /** Port accesses forwarded to the VMM thread meanwhile. */
  forwarded: number;
  /** Run-loop exits meanwhile. */
  exits: number;
  /** Pages per second in each window. */
  windowRates: number[];
}

/** The port I/O exit cost as the write rate shows it. */
export interface PortIoExit {
  /** Guest RAM and working set of the 1-vCPU guest. */
  memBytes: number;
  /** Its working set. */
  workingSetBytes: number;
  /** With an OUT after every page. */
  every: IntervalTotals & { pagesPerSec: number; outsPerPage: number; exitsPerPage: number };
  /** With an OUT every `reportInterval` pages (almost none). */
  rare: IntervalTotals & { pagesPerSec: number; outsPerPage: number; exitsPerPage: number };
  /** µs of guest time per page write without OUTs. */
  pageUs: number;
  /** µs per OUT, from the pooled windows. */
  exitUs: number;
  /** µs per OUT from each pair of adjacent windows (the spread is the noise). */
  pairedExitUs: number[];
}

/**
 * Boots a 1-vCPU memstamp guest and, once it has stamped its memory, alternates its report interval
 * (the guest reads it from its config page at every page) between 1 and `rare` for `rounds` pairs of
 * `windowMs` windows; the extra time per page divided by the extra OUTs per page is one OUT's cost.
 */
export async function portIoExit(
  accel: Accelerator,
  memBytes: number,
  workingSetBytes: number,
  rounds: number,
  windowMs: number,
  rare = 65536,
): Promise<PortIoExit> {
  const m = await Machine.create(
    {
      name: "bench-pio",
      guest: "memstamp",
      memSize: memBytes,
      vcpus: 1,
      memstamp: { pattern: "random", workingSet: workingSetBytes, reportInterval: rare },
    },
    quiet,
    accel,
  );
  try {
    await m.vm.start();
    await m.memstamp!.waitStamped(600_000);
    const cfg = m.vm.memory.u64(LAYOUT.CONFIG, 16);
    const v = m.vm.vcpus[0];
    const totals = (reportInterval: number): IntervalTotals => ({
      reportInterval,
      pages: 0,
      secs: 0,
      forwarded: 0,
      exits: 0,
      windowRates: [],
    });
    const every = totals(1), few = totals(rare);
    const paired: number[] = [];
    for (let r = 0; r < rounds; r++) {
      const got = new Map<IntervalTotals, { us: number; outs: number }>();
      for (const t of r % 2 === 0 ? [every, few] : [few, every]) {
        cfg[CFG.INTERVAL / 8] = BigInt(t.reportInterval);
        await sleep(100);
        const w0 = written(m), f0 = v.forwarded, e0 = v.exits, t0 = performance.now();
        await sleep(windowMs);
        const pages = written(m) - w0, secs = (performance.now() - t0) / 1000;
        const fwd = (v.forwarded - f0) >>> 0, ex = (v.exits - e0) >>> 0;
        t.pages += pages;
        t.secs += secs;
        t.forwarded += fwd;
        t.exits += ex;
        t.windowRates.push(pages / secs);
        got.set(t, { us: (secs * 1e6) / pages, outs: fwd / pages });
      }
      const a = got.get(every)!, b = got.get(few)!;
      paired.push((a.us - b.us) / Math.max(1e-9, a.outs - b.outs));
    }
    const done = (t: IntervalTotals) => ({
      ...t,
      pagesPerSec: t.pages / t.secs,
      outsPerPage: t.forwarded / t.pages,
      exitsPerPage: t.exits / t.pages,
    });
    const e = done(every), f = done(few);
    const pageUs = 1e6 / f.pagesPerSec;
    const exitUs = (1e6 / e.pagesPerSec - pageUs) / Math.max(1e-9, e.outsPerPage - f.outsPerPage);
    return {
      memBytes,
      workingSetBytes,
      every: e,
      rare: f,
      pageUs,
      exitUs,
      pairedExitUs: paired,
    };
  } finally {
    await m.vm.stop().catch(() => {});
  }
}
