/**
 * Hosts one VM in this process: boots a spec or restores a checkpoint, serves its control socket with
 * the checkpoint operation, and for lazy restores runs the pager once the vCPUs run.
 */
import { getLogger } from "@logtape/logtape";
import type { Accelerator } from "../accel/accel.ts";
import { checkpointHandlers } from "../ckpt/control.ts";
import { restoreCheckpoint, type Restored } from "../ckpt/restore.ts";
import { targetSpecOf } from "../ckpt/store.ts";
import type { ControlServer } from "../vmm/control/server.ts";
import { Machine, type MachineSpec, MachineSpecError } from "../vmm/machine.ts";
import { DirtyTracker } from "../memory/dirty_tracker.ts";
import { SplitControl, type SplitRequest } from "../paging/control.ts";
import { runMachine, type RunReport } from "../vmm/runner.ts";
import { Fence } from "./fence.ts";
import { checkpointWithCopies } from "./host_copies.ts";

const log = getLogger(["dcres", "restore"]);

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
  /** Why a lazy restore could not load every page (the VM was stopped): a damaged copy, say. */
  failed?: string;
}

/** Hosting options. */
export interface HostOptions {
  /** The accelerator to boot or restore on (default: `openAccelerator()`). */
  accel?: Accelerator;
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
  /** Run split: most of the memory on sub-hosts, reached with the identity in `identityDir`. */
  split?: SplitRequest;
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
  let tracker!: DirtyTracker;
  let paging!: SplitControl;
  let fence: Fence | undefined;
  const split = opts.split;
  const holders = split?.holders;
  if (split && t.kind !== "boot" && !holders) {
    throw new MachineSpecError("a split restore needs the host of each fragment (holders)");
  }
  const rep = await runMachine(spec, {
    stateDir: opts.stateDir,
    forMs: opts.forMs,
    serialOut: opts.serialOut,
    build: async (io) => {
      let m: Machine;
      if (t.kind === "restore") {
        restored = restoreCheckpoint({
          path: t.path,
          name: t.name,
          lazy: t.lazy,
          io,
          accel: opts.accel,
          onProgress: opts.onProgress,
          only: holders ? new Set(holders.flatMap((h, f) => h === 0 ? [f] : [])) : undefined,
        });
        m = restored.machine;
      } else m = await Machine.create(spec, io, opts.accel);
      tracker = new DirtyTracker(m.vm.memory.pages, () => m.vm.dirtyBitmap());
      tracker.baselineId = restored?.checkpoint.manifest.id;
      paging = new SplitControl(m, tracker);
      if (split) {
        try {
          if (restored && holders) {
            const of = restored.checkpoint.fragmentOf;
            await paging.adopt(
              split,
              Uint8Array.from(of, (f) => holders[f]),
              t.kind === "restore" && t.lazy ? restored.checkpoint : undefined,
            );
          } else await paging.boot(split);
        } catch (e) {
          await m.vm.stop();
          throw e;
        }
      }
      return m;
    },
    handlers: (m) => ({
      ...checkpointHandlers(
        m,
        tracker,
        restored?.pager?.done ?? paging.pager?.localDone,
        (r, o, local) =>
          paging.checkpoint(r, o, () => checkpointWithCopies(r, m.vm.memory.pages, local)),
      ),
      ...paging.handlers(),
    }),
    info: () => ({
      ...(times ? { restore: times } : {}),
      ...paging.info(),
      ...(fence?.reason ? { state: "paused", pausedReason: fence.reason } : {}),
      ...(fence?.fencedAtMs ? { fencedAtMs: fence.fencedAtMs } : {}),
    }),
    onStarted: async (m, server) => {
      const watch = new Fence(m.vm, opts.stateDir);
      fence = watch;
      m.vm.onClose(() => watch[Symbol.dispose]());
      if (restored) {
        const resumeMs = performance.now() - t0;
        times = {
          from: restored.checkpoint.dir,
          lazy: !!restored.pager || !!paging.pager?.localDone,
          resumeMs,
          residentMs: restored.pager || paging.pager?.localDone ? undefined : resumeMs,
        };
        opts.onRestore?.(times);
        const ck = restored.checkpoint;
        // A page the lazy pass could not read would stall the vCPU touching it for good: the VM
        // stops, and the agent that asked for the restore hears why (and can try another copy).
        const fail = (e: Error) => {
          const detail = `lazy restore from ${ck.dir} failed: ${e.message}; ` +
            "its memory is incomplete, so it was stopped: restore it again";
          log.error("{vm}: {detail}", { vm: m.spec.name, detail });
          if (times) times.failed = e.message;
          void m.vm.stop({ reason: "error", detail });
        };
        if (restored.pager) {
          const pager = restored.pager;
          m.vm.onClose(async () => {
            pager.stop();
            await pager.done.catch(() => {});
            pager.close();
          });
          void pager.run().then(() => {
            if (!m.vm.isStopped && times) {
              times.residentMs = performance.now() - t0;
              opts.onRestore?.(times);
            }
          }).catch((e) => fail(e as Error)).finally(() => ck.close());
        } else if (paging.pager?.localDone) {
          // A lazy split restore: the pager installs main's pages from the checkpoint, then closes it.
          const pager = paging.pager;
          void pager.localDone!.then(() => {
            if (pager.localError) fail(pager.localError);
            else if (!m.vm.isStopped && times) {
              times.residentMs = performance.now() - t0;
              opts.onRestore?.(times);
            }
          });
        } else {
          ck.close();
        }
      }
      await opts.onStarted?.(m, server);
    },
  });
  return { ...rep, restore: times };
}
