/** `dcres restore DIR`: restore a checkpoint into a running VM, in the foreground or detached. */
import { resolve } from "node:path";
import { checkGuestSupported } from "../vmm/machine.ts";
import { EXIT, type GlobalOptions, report, stateDirOf } from "./context.ts";
import { hostVm, type RestoreTimes, targetSpec } from "../vmm_process/host_vm.ts";
import { spawnRestore } from "../agent/spawn.ts";
import { agentAddr, agentCalls, remoteCall } from "./remote.ts";
import { progressBar } from "./progress.ts";
import { fmtBytes, parseDuration, UsageError } from "./units.ts";
import { checkPlan } from "../agent/plan_reply.ts";
import {
  restoreSplit,
  RestoreTargetError,
  type SplitRestoreReport,
  type SplitTargets,
} from "../coord/split_restore.ts";
import { noteSlowGuestKernel, openAcceleratorFlag, remoteAccel } from "./accel_flag.ts";
import { PAGE_SIZE } from "../accel/accel.ts";

/** Flags of `dcres restore`. */
export interface RestoreFlags {
  name?: string;
  lazy?: boolean;
  detach?: boolean;
  for?: string;
  single?: string;
  main?: string;
  sub?: string;
  map?: string[];
  accel?: string;
}

const fmtTimes = (name: string, t: RestoreTimes) =>
  `restored ${name} from ${t.from}${t.lazy ? " (lazy)" : ""}: running after ${
    t.resumeMs.toFixed(0)
  } ms` +
  (t.residentMs !== undefined ? `, fully resident after ${t.residentMs.toFixed(0)} ms` : "");

/** Runs `dcres restore`. */
export async function restoreCommand(
  g: GlobalOptions,
  path: string,
  f: RestoreFlags,
): Promise<number> {
  const source = agentAddr(g);
  const targets: SplitTargets = {
    single: f.single,
    main: f.main,
    subs: f.sub?.split(",").filter(Boolean),
    map: f.map,
  };
  const placed = !!(f.single || f.main || f.sub || f.map?.length);
  if (f.sub && !f.main) throw new UsageError("--sub goes with --main (the restored split's main)");
  if (f.single && (f.main || f.map?.length)) {
    throw new UsageError("--single restores onto one host: drop --main, --sub and --map");
  }
  if (placed && !source) {
    throw new UsageError("--single, --main, --sub and --map restore through agents: add --agent");
  }
  if (source) {
    const plan = checkPlan(source, await remoteCall<unknown>(g, "ckpt.plan", { path }));
    if (placed && !plan.inStore) {
      throw new UsageError(
        `${path} is outside the agent's checkpoint store: --single, --main and --map restore checkpoints named by id (or STORE/gNNNNNN) in it`,
      );
    }
    if (plan.split || placed) {
      const r = await restoreSplit(
        agentCalls(g),
        source,
        {
          ...plan,
          // A one-host checkpoint's fragments come from the agent that answered (a holder).
          split: plan.split ??
            { mainMemBytes: plan.memSize, hosts: { main: "main" }, mainAddr: source },
        },
        { name: f.name, lazy: f.lazy, ...remoteAccel(f.accel) },
        targets,
      ).catch((e): SplitRestoreReport => {
        // The targets came from the flags: a person's mistake, told as one.
        if (e instanceof RestoreTargetError) throw new UsageError(e.message);
        throw e;
      });
      report(g, r, () =>
        [
          `restored ${r.name} from checkpoint ${plan.id.slice(0, 12)} on ${r.main}${
            Object.keys(r.subs).length
              ? ` with sub-hosts ${
                Object.entries(r.subs).map(([h, n]) => `${h} (${fmtBytes(n * PAGE_SIZE)})`).join(
                  ", ",
                )
              }`
              : ""
          } in ${r.totalMs.toFixed(0)} ms`,
          `  copied ${r.copied.files} files (${fmtBytes(r.copied.bytes)}) in ${
            r.copied.ms.toFixed(0)
          } ms; sub-hosts loaded ${r.loadMs.toFixed(0)} ms after the copies began`,
        ].join("\n"));
      return EXIT.OK;
    }
    const t = await remoteCall<RestoreTimes & { name: string; pid: number }>(g, "restore", {
      path,
      name: f.name,
      lazy: !!f.lazy,
      ...remoteAccel(f.accel),
    });
    report(g, t, () => fmtTimes(t.name, t));
    return EXIT.OK;
  }
  const target = { kind: "restore" as const, path: resolve(path), name: f.name, lazy: !!f.lazy };
  const spec = targetSpec(target);
  const stateDir = stateDirOf(g);
  const forMs = f.for ? parseDuration("--for", f.for) : undefined;
  // The checkpoint restores on the accelerator chosen here, whichever one it was taken on.
  const accel = openAcceleratorFlag(f.accel);
  checkGuestSupported(spec.guest, accel);
  if (f.detach) {
    const t = await spawnRestore(target.path, stateDir, {
      name: f.name,
      lazy: f.lazy,
      forMs,
      accel: accel.kind,
    });
    report(g, t, () => fmtTimes(t.name, t as RestoreTimes));
    return EXIT.OK;
  }
  if (spec.guest === "linux") noteSlowGuestKernel(accel);
  const bar = progressBar(g, `restore ${spec.name}`);
  const rep = await hostVm(target, {
    accel,
    stateDir,
    forMs,
    onProgress: (d, t) => bar.update(d, t),
    onRestore: (t) => {
      bar.stop();
      if (!g.json) console.error(fmtTimes(spec.name, t));
    },
  });
  report(g, rep, () => `${rep.name}: ${rep.exit.reason} (${rep.exit.detail})`);
  return rep.exit.reason === "error" ? EXIT.FAILURE : EXIT.OK;
}
