/**
 * Hosts one VM in this process: boots a spec or restores a checkpoint, serves its control socket with
 * the checkpoint operation, and for lazy restores runs the pager once the vCPUs run.
 */
import { checkpointHandlers } from "../ckpt/control.ts";
import { restoreCheckpoint, type Restored } from "../ckpt/restore.ts";
import { targetSpecOf } from "../agent/restore_spec.ts";
import type { ControlServer } from "../vmm/control/server.ts";
import type { Machine, MachineSpec } from "../vmm/machine.ts";
import { runMachine, type RunReport } from "../vmm/runner.ts";

/** What to host. */
export type HostTarget =
  | { kind: "boot"; spec: MachineSpec }
  | { kind: "restore"; path: string; name?: string; lazy: boolean };

/** Restore timings. */
export interface RestoreTimes {
  /** Checkpoint generation directory. */
  from: string;
  /** Lazy restore. */
  lazy: boolean;
  /** ms from the start of the restore until the vCPUs ran. */
  resumeMs: number;
  /** ms from the start until every page was resident (eager: same as resume). */
  residentMs?: number;
}

/** Hosting options. */
export interface HostOptions {
  /** Control socket directory. */
  stateDir: string;
  /** Stop after this long. */
  forMs?: number;
  /** Guest serial output. */
  serialOut?: (b: Uint8Array) => void;
  /** Called once the vCPUs run. */
  onStarted?: (m: Machine, server: ControlServer) => void | Promise<void>;
  /** Called when restore timings change (resumed; fully resident). */
  onRestore?: (t: RestoreTimes) => void;
  /** Restore progress (bytes loaded). */
  onProgress?: (done: number, total: number) => void;
}

/** The name and spec a target will run under (restores read the checkpoint's manifest). */
export function targetSpec(t: HostTarget): MachineSpec {
  return t.kind === "boot" ? t.spec : targetSpecOf(t.path, t.name);
}

/** Runs the target until it stops. */
export async function hostVm(
  t: HostTarget,
  opts: HostOptions,
): Promise<RunReport & { restore?: RestoreTimes }> {
  const spec = targetSpec(t);
  const t0 = performance.now();
  let restored: Restored | undefined;
  let times: RestoreTimes | undefined;
  const rep = await runMachine(spec, {
    stateDir: opts.stateDir,
    forMs: opts.forMs,
    serialOut: opts.serialOut,
    build: t.kind === "restore"
      ? (io) => {
        restored = restoreCheckpoint({
          path: t.path,
          name: t.name,
          lazy: t.lazy,
          io,
          onProgress: opts.onProgress,
        });
        return restored.machine;
      }
      : undefined,
    handlers: (m) => checkpointHandlers(m, restored?.checkpoint.manifest.id, restored?.pager?.done),
    info: () => (times ? { restore: times } : {}),
    onStarted: async (m, server) => {
      if (restored) {
        const resumeMs = performance.now() - t0;
        times = {
          from: restored.checkpoint.dir,
          lazy: !!restored.pager,
          resumeMs,
          residentMs: restored.pager ? undefined : resumeMs,
        };
        opts.onRestore?.(times);
        const ck = restored.checkpoint;
        if (restored.pager) {
          const pager = restored.pager;
          m.vm.exited.then(() => pager.stop());
          void pager.run().then(() => {
            if (!m.vm.isStopped && times) {
              times.residentMs = performance.now() - t0;
              opts.onRestore?.(times);
            }
          }).catch(() => {}).finally(() => ck.close());
        } else {
          ck.close();
        }
      }
      await opts.onStarted?.(m, server);
    },
  });
  return { ...rep, restore: times };
}
