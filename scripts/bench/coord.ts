/**
 * The coordinator benchmark (issue 16): a 1 GiB memstamp VM split over four of five local agents
 * (the fifth a spare), leased by a coordinator; its main host's agent and VMM are killed. Detection: from the kill to the host
 * suspect, to its lease taken for lapsed (by then the host must have fenced), and to the host
 * declared down, each against its floor in the configured timings (the reference: no detector with
 * these settings can be faster; silence and the lease count from the host's last answer, which may
 * precede the kill by one heartbeat). Recovery: from the host declared down to the guest running
 * again, restored lazily by the coordinator, against a plain `dcres restore --lazy` of the same
 * checkpoint by hand in the same run (the reference), measured alike: from the command to the
 * guest running. --mem (1G), --main-mem (256M), --ws per
 * vCPU (128M) on KVM; 256M, 64M and 32M on the emulated CPU unless DCRES_BENCH_SIZE=full.
 */
import { join } from "node:path";
import { issueHost } from "../../src/cli/ca_admin.ts";
import { selfCommand, spawnDetached } from "../../src/agent/spawn.ts";
import { SqliteState } from "../../src/coord/sqlite_state.ts";
import type { CoordEvent } from "../../src/coord/state.ts";
import { request } from "../../src/vmm/control/client.ts";
import type { VmInfo } from "../../src/vmm/control/protocol.ts";
import { BenchAgents } from "./agents.ts";
import { BenchAccel } from "./accel.ts";
import { line } from "./stats.ts";

const sleep = (t: number) => new Promise((r) => setTimeout(r, t));
/** How often the store and the VMs are looked at, ms: the resolution of every figure. */
const POLL_MS = 20;
/** How long after host-down a `restored` event is waited for. */
const RESTORE_WAIT_MS = 30_000;

/** The coordinator's timings: the test suite's, fast enough for a bench. */
const TIMINGS = {
  heartbeatMs: 300,
  suspectMs: 1000,
  downMs: 2000,
  lease: { ttlMs: 5000, drift: 0.01, fenceMs: 1000 },
};

/** Waits until `f` gives a value (polling every POLL_MS, at most `ms`); returns it and when. */
async function until<T>(
  ms: number,
  f: () => Promise<T | undefined>,
): Promise<{ v: T; at: number } | undefined> {
  for (const end = Date.now() + ms; Date.now() < end; await sleep(POLL_MS)) {
    const v = await f().catch(() => undefined);
    if (v !== undefined) return { v, at: Date.now() };
  }
  return undefined;
}

/** VM `name` of the node whose run directory is `run`, once it runs. */
function running(run: string, name: string): () => Promise<VmInfo | undefined> {
  return async () => {
    const v = await request<VmInfo>(run, name, { op: "info" });
    return v.state === "running" ? v : undefined;
  };
}

/** Runs the coordinator benchmark and returns its JSON report. */
export async function benchCoord(args: string[]): Promise<unknown> {
  const flag = (name: string, dflt: string) => {
    const i = args.indexOf(name);
    return i >= 0 ? args[i + 1] : dflt;
  };
  const ba = BenchAccel.open();
  const mem = flag("--mem", ba.pick({ full: "1G", emu: "256M" }));
  const mainMem = flag("--main-mem", ba.pick({ full: "256M", emu: "64M" }));
  const ws = flag("--ws", ba.pick({ full: "128M", emu: "32M" }));
  const tag = (label: string) => ba.cpu(label);
  const b = new BenchAgents("coord", 7437);
  const hosts = await b.up(5);
  const [main, ...subs] = hosts.slice(0, 4);
  const runOf = (addr: string) => join(b.dir, `node${hosts.indexOf(addr) + 1}`, "data", "run");
  const { heartbeatMs, suspectMs, downMs, lease } = TIMINGS;
  console.log(
    `dcres bench coord: memstamp ${mem} split over main + ${subs.length} sub-hosts (main-mem ${mainMem}), its main host's agent and VMM killed; heartbeats every ${heartbeatMs} ms, suspect after ${suspectMs} ms, down after ${downMs} ms, lease ${lease.ttlMs} ms + ${lease.fenceMs} ms to fence, drift ${lease.drift}; on loopback; ${
      ba.describe(false)
    }`,
  );
  const conf = join(b.dir, "coord.json");
  await issueHost({
    caDir: join(b.dir, "ca"),
    host: "coord",
    role: "coordinator",
    outDir: join(b.dir, "coord", "identity"),
  });
  Deno.writeTextFileSync(
    conf,
    JSON.stringify({
      agents: hosts.map((addr, i) => ({ name: `node${i + 1}`, addr })),
      identityDir: join(b.dir, "coord", "identity"),
      dataDir: join(b.dir, "coord"),
      id: "bench",
      ...TIMINGS,
    }),
  );
  const coord = spawnDetached(selfCommand(["coord", "--config", conf]), join(b.dir, "coord.log"));
  let state: SqliteState | undefined;
  try {
    await b.dcres(
      ...["vm", "start", "--main", main, "--sub", subs.join(","), "--name", "d"],
      ...["--mem", mem, "--main-mem", mainMem, "--ws", ws, "--pattern", "random"],
    );
    const v = await until(120_000, running(runOf(main), "d"));
    if (!v) throw new Error(`the VM did not start running; see ${b.dir}/node1/data/run`);
    if (v.v.accel !== ba.kind) {
      throw new Error(`the VM runs on ${v.v.accel}, not ${ba.kind}: is DCRES_ACCEL set alike?`);
    }
    // Two copies of every fragment (the default), so the checkpoint outlives its main host.
    const ckpt = JSON.parse(
      await b.dcres("--agent", main, "--json", "checkpoint", "d", "--mode", "cow"),
    ) as { checkpoint: string };

    // The reference: the same checkpoint restored lazily by hand, until its guest runs.
    const t0 = Date.now();
    const cmd = b.dcres(
      "--agent",
      main,
      "--json",
      "restore",
      ckpt.checkpoint,
      "--lazy",
      "--name",
      "r",
    );
    const byHand = await until(120_000, running(runOf(main), "r"));
    const report = JSON.parse(await cmd) as { main?: string; restore?: { resumeMs?: number } };
    if (!byHand) throw new Error("the VM restored by hand never ran");
    const byHandMs = byHand.at - t0;
    line(tag("restore --lazy by hand to running (reference)"), `${byHandMs} ms`);
    line(tag("  its VMM start to resume"), `${report.restore?.resumeMs?.toFixed(0) ?? "?"} ms`);
    await b.dcres("--agent", report.main ?? main, "vm", "stop", "r");

    state = new SqliteState(join(b.dir, "coord", "coord.db"));
    // Only events after `after`: under load a host may have gone suspect before the kill.
    let after = 0;
    const events = async (kind: string, what: (e: CoordEvent) => boolean) =>
      (await state!.events({ after })).find((e) => e.kind === kind && what(e));
    const up = await until(30_000, async () => {
      const ev = await state!.events();
      return hosts.every((h) => ev.some((e) => e.kind === "host-up" && e.host === h)) || undefined;
    });
    if (!up) throw new Error(`the coordinator did not lease every host; see ${b.dir}/coord.log`);
    // A few renewals, so the lease the kill leaves is a steady one.
    await sleep(2 * lease.ttlMs);

    const pids = [v.v.pid, Number(Deno.readTextFileSync(join(b.dir, "node1", "agent.pid")))];
    const before = await state.events();
    after = before.at(-1)?.seq ?? 0;
    // Heartbeats this machine's load left unanswered for suspectMs before any failure.
    const falseSuspects = before.filter((e) => e.kind === "host-suspect").length;
    if (falseSuspects) {
      console.log(`  ${falseSuspects} host(s) went suspect before the kill (load)`);
    }
    const killedAt = Date.now();
    for (const pid of pids) Deno.kill(pid, "SIGKILL");
    const ofMain = (e: CoordEvent) => e.host === main;
    const down = await until(60_000, () => events("host-down", ofMain));
    if (!down) throw new Error(`the main host was never declared down; see ${b.dir}/coord.log`);
    const suspect = (await events("host-suspect", ofMain))!;
    const lapsedAt = (await state.get("lease", main))!.value.expiresMs;
    // The floors, counted from the kill: the coordinator counts silence from the host's last
    // answer and the lease from its last grant, and both may precede the kill by a heartbeat.
    const lapse = (lease.ttlMs + lease.fenceMs) * (1 + lease.drift);
    const floor = {
      suspectMs: suspectMs - heartbeatMs,
      leaseLapsedMs: lapse - heartbeatMs,
      downMs: Math.max(downMs, lapse) - heartbeatMs,
    };
    const detect = {
      suspectMs: suspect.timeMs - killedAt,
      leaseLapsedMs: lapsedAt - killedAt,
      downMs: down.v.timeMs - killedAt,
    };
    const figures: [keyof typeof detect, string, string][] = [
      ["suspectMs", "killed → host suspect", "suspectMs − heartbeatMs"],
      ["leaseLapsedMs", "killed → lease lapsed (fenced by then)", "(ttl + fence)(1 + drift) − hb"],
      ["downMs", "killed → host down", "max(downMs, lease) − heartbeatMs"],
    ];
    for (const [k, label, what] of figures) {
      line(tag(label), `${detect[k]} ms`, {
        x: detect[k] / floor[k],
        of: `the floor, ${what} (${floor[k]} ms)`,
      });
    }

    const restored = await until(RESTORE_WAIT_MS, () => events("restored", (e) => e.vm === "d"));
    if (!restored) {
      const failed = await events("restore-failed", (e) => e.vm === "d");
      throw new Error(
        `no restore of d within ${RESTORE_WAIT_MS} ms of host-down: ${
          failed?.detail ?? "no restore-failed event either"
        }; see ${b.dir}/coord.log`,
      );
    }
    // The event names the host that failed; the placement, where the VM runs now.
    const at = (await state.get("placement", "d"))?.value.main ?? "?";
    const again = await until(120_000, running(runOf(at), "d"));
    if (!again) throw new Error(`the coordinator restored d on ${at}, where it never ran`);
    // When it started running by its own account (its control socket comes up with the restored
    // machine: uptimeMs), not when this poll, which waited for the event first, saw it.
    const runningAt = again.at - again.v.uptimeMs;
    const ms = Math.round(runningAt - down.v.timeMs);
    const recovery = {
      host: at,
      declaredToRunningMs: ms,
      eventRecoveryMs: restored.v.recoveryMs,
      checkpoint: restored.v.checkpoint,
    };
    line(tag("down → guest running again, restored lazily"), `${ms} ms`, {
      x: ms / byHandMs,
      of: "of the restore by hand",
    });
    line(tag("  aim: running within 2 s of down"), ms <= 2000 ? "met" : "missed");
    // Where the time went, step by step, as the coordinator recorded it.
    console.log(`  ${restored.v.detail ?? ""}`);
    line(
      tag("  recoveryMs of the event (from last answer)"),
      `${restored.v.recoveryMs} ms`,
    );
    return {
      bench: "coord",
      accel: ba.info,
      date: new Date().toISOString(),
      mem,
      mainMem,
      hosts: hosts.length,
      timings: TIMINGS,
      byHandRestoreMs: byHandMs,
      byHandReport: report,
      detection: detect,
      detectionFloor: floor,
      falseSuspects,
      recovery,
    };
  } finally {
    await state?.close();
    try {
      coord.kill("SIGTERM");
    } catch {
      // Already gone.
    }
    await b.cluster("down").catch(() => {});
  }
}
