/**
 * The D-CRES benchmark on one split VM (memstamp, random writes over most of its memory, paging
 * heavily) on local agents: the parallel checkpoint in each mode against the traditional one (pause,
 * pull every page to main, save there), downtime per mode, an incremental checkpoint's size against
 * the pages the guest wrote since the last one, and the parallel restore (eager and lazy) against
 * the traditional one-host restore. References measured in the same run: the traditional mechanism,
 * and a raw sequential write of the same bytes to the same disk. Sizes: --mem (2G), --main-mem
 * (512M), --ws per vCPU (768M), --vcpus (2) on KVM; on the emulated CPU 256M, 64M, 96M and 2 (the
 * same proportions) unless DCRES_BENCH_SIZE=full. The agents run their VMs on the accelerator this
 * process would pick (`DCRES_ACCEL`, else auto).
 */
import { join } from "node:path";
import { parseSize } from "../../src/cli/units.ts";
import { BenchAgents } from "./agents.ts";
import { BenchAccel } from "./accel.ts";
import { randomBytes, rawWrite } from "./disk.ts";
import { line } from "./stats.ts";
import { unitExposure } from "./unit.ts";

const MiB = 1 << 20;
const sleep = (t: number) => new Promise((r) => setTimeout(r, t));

interface Ckpt {
  checkpoint: string;
  mode: string;
  downtimeMs: number;
  pagesSaved: Record<string, number>;
  pagesSentToSave: number;
  pagesMovedMeanwhile: number;
  stats: { pagesSaved: number; zeroPages: number; bytesWritten: number; totalMs: number };
}

/** Runs the D-CRES benchmark and returns its JSON report. */
export async function benchDcres(args: string[]): Promise<unknown> {
  const flag = (name: string, dflt: string) => {
    const i = args.indexOf(name);
    return i >= 0 ? args[i + 1] : dflt;
  };
  const ba = BenchAccel.open();
  const memText = flag("--mem", ba.pick({ full: "2G", emu: "256M" }));
  const mainMem = flag("--main-mem", ba.pick({ full: "512M", emu: "64M" }));
  const wsText = flag("--ws", ba.pick({ full: "768M", emu: "96M" })), vcpus = flag("--vcpus", "2");
  const tag = (label: string) => ba.cpu(label);
  const memSize = parseSize("--mem", memText);
  const b = new BenchAgents("dcres", 7433);
  const hosts = await b.up(4);
  const [main, ...subs] = hosts;
  const a = ["--agent", main];
  console.log(
    `dcres bench dcres: memstamp ${memText} split over main + ${subs.length} sub-hosts (main-mem ${mainMem}), ${vcpus} vCPUs writing ${wsText} each at random, on loopback; ${ba.describe()}`,
  );
  const exposure = await unitExposure();
  console.log(
    `  the agent's systemd unit: exposure ${
      exposure?.toFixed(1) ?? "unknown (no systemd-analyze)"
    } by systemd-analyze security (0 safest, 10 least safe)`,
  );
  try {
    await b.dcres(
      ...["vm", "start", "--main", main, "--sub", subs.join(","), "--name", "d"],
      ...["--mem", memText, "--main-mem", mainMem, "--ws", wsText],
      ...["--vcpus", vcpus, "--pattern", "random"],
    );
    // Until it has stamped its memory and paged a good share of it.
    for (;;) {
      const v = await b.info(main, "d");
      if (v.accel !== ba.kind) {
        throw new Error(`the VM runs on ${v.accel}, not ${ba.kind}: is DCRES_ACCEL set alike?`);
      }
      if (v.memstamp!.phase.every((p) => p >= 2) && (v.paging?.pageOuts ?? 0) > memSize / 8192) {
        break;
      }
      await sleep(1000);
    }
    const checkpoint = async (...extra: string[]) => {
      const t0 = performance.now();
      const r = JSON.parse(await b.dcres(...a, "--json", "checkpoint", "d", ...extra)) as Ckpt;
      return { ...r, wallMs: performance.now() - t0 };
    };
    const modes: Record<string, Ckpt & { wallMs: number }> = {};
    for (const mode of ["stop", "precopy", "cow"]) {
      const r = await checkpoint("--mode", mode);
      modes[mode] = r;
    }
    // The incremental after the last full one: what the guest wrote since, against what it saved.
    const before = (await b.info(main, "d")).memstamp!.written;
    await sleep(5000);
    const inc = await checkpoint("--mode", "precopy", "--incremental");
    const written = (await b.info(main, "d")).memstamp!.written - before;
    line(tag("incremental (precopy) after 5 s"), `${inc.stats.pagesSaved} pages`, {
      x: inc.stats.pagesSaved / Math.max(1, written),
      of: `of the ${written} page writes since the last`,
    });
    line(tag("  its time"), `${(inc.wallMs / 1000).toFixed(2)} s`);

    // The traditional one last: it leaves every page on main, and main needs a while to page
    // most of them out again.
    const trad = await checkpoint("--traditional", "--mode", "stop");
    line(
      tag("traditional checkpoint (reference)"),
      `${(trad.wallMs / 1000).toFixed(2)} s`,
    );
    line(tag("  its downtime (all of it)"), `${trad.downtimeMs.toFixed(0)} ms`);
    line(tag("  pages sent to main to be saved"), String(trad.pagesSentToSave));
    for (const [mode, r] of Object.entries(modes)) {
      line(tag(`parallel checkpoint, ${mode}`), `${(r.wallMs / 1000).toFixed(2)} s`, {
        x: trad.wallMs / r.wallMs,
        of: "faster than traditional",
      });
      line(tag(`  downtime`), `${r.downtimeMs.toFixed(1)} ms`, {
        x: trad.downtimeMs / r.downtimeMs,
        of: "shorter than traditional",
      });
      line(
        tag(`  pages saved per host`),
        Object.values(r.pagesSaved).map((n) => Math.round(n * 4 / 1024)).join("/") + " MiB",
      );
      line(tag(`  pages sent to be saved`), String(r.pagesSentToSave));
    }
    // Where a parallel checkpoint's time goes: the bytes every host wrote, against one raw write
    // of the same bytes to the same disk (the four hosts share it here).
    const bytes = modes.stop.stats.bytesWritten;
    const dir = join(Deno.makeTempDirSync({ prefix: "dcres-bench-dcres-raw-" }));
    const raw = rawWrite(join(dir, "raw"), randomBytes(64 * MiB), bytes);
    Deno.removeSync(dir, { recursive: true });
    line("raw write of the same bytes (disk reference)", `${(raw.totalMs / 1000).toFixed(2)} s`);
    line(
      tag("parallel stop checkpoint against it"),
      `${(modes.stop.stats.totalMs / 1000).toFixed(2)} s`,
      {
        x: modes.stop.stats.totalMs / raw.totalMs,
        of: "of the raw write",
      },
    );

    await b.dcres(...a, "vm", "stop", "d");
    const restore = async (id: string, ...extra: string[]) => {
      const t0 = performance.now();
      const r = JSON.parse(await b.dcres(...a, "--json", "restore", id, ...extra));
      const ms = performance.now() - t0;
      const host = r.main ?? main;
      await b.dcres("--agent", host, "vm", "stop", r.name);
      return { ms, report: r };
    };
    const tradRestore = await restore(trad.checkpoint, "--name", "t");
    line(
      tag("traditional restore, one host (reference)"),
      `${(tradRestore.ms / 1000).toFixed(2)} s`,
    );
    const eager = await restore(modes.precopy.checkpoint);
    line(tag("parallel restore, eager"), `${(eager.ms / 1000).toFixed(2)} s`, {
      x: tradRestore.ms / eager.ms,
      of: "faster than traditional",
    });
    const lazy = await restore(modes.precopy.checkpoint, "--lazy");
    line(tag("parallel restore, lazy (until resident)"), `${(lazy.ms / 1000).toFixed(2)} s`, {
      x: tradRestore.ms / lazy.ms,
      of: "faster than traditional",
    });
    const resumed = (r: { report: { restore?: { resumeMs?: number } } }) =>
      r.report.restore?.resumeMs ?? 0;
    line(tag("  the VM running after (VMM start to resume)"), `${resumed(lazy).toFixed(0)} ms`, {
      x: (tradRestore.report.resumeMs ?? 0) / Math.max(1, resumed(lazy)),
      of: "sooner than traditional",
    });
    return {
      bench: "dcres",
      accel: ba.info,
      date: new Date().toISOString(),
      memSize,
      mainMem,
      workingSetPerVcpu: parseSize("--ws", wsText),
      vcpus: Number(vcpus),
      hosts: hosts.length,
      unitExposure: exposure,
      traditional: trad,
      parallel: modes,
      incremental: { ...inc, guestWritesSince: written },
      rawWrite: raw,
      restore: { traditional: tradRestore, eager, lazy },
    };
  } finally {
    await b.cluster("down").catch(() => {});
  }
}
