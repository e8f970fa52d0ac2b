/**
 * `dcres migrate NAME --main A --sub B,C --main-mem SIZE`: split a running VM in place, pre-copy
 * style (its vCPUs stay on A, the host it runs on); `dcres migrate NAME --to A`: gather a split VM
 * back onto its main host A; `dcres migrate NAME --main A --move-sub B=D`: move sub-host B's pages
 * to D while the VM runs.
 */
import type { SplitReport } from "../paging/remote_pager.ts";
import { checkAddress, UsageError } from "./units.ts";
import { EXIT, type GlobalOptions, report } from "./context.ts";
import { agentAddr, remoteCall } from "./remote.ts";
import { splitTarget } from "./split_flags.ts";
import { fmtBytes } from "./units.ts";
import { PAGE_SIZE } from "../accel/accel.ts";

/** Flags of `dcres migrate`. */
export interface MigrateFlags {
  main?: string;
  sub?: string;
  mainMem?: string;
  to?: string;
  moveSub?: string;
}

/** Runs `dcres migrate`. */
export async function migrateCommand(
  g: GlobalOptions,
  name: string,
  f: MigrateFlags,
): Promise<number> {
  if (f.to) {
    if (f.sub || f.mainMem || f.main) {
      throw new UsageError(
        "--to gathers a split VM; it does not combine with --main, --sub or --main-mem",
      );
    }
    const r = await remoteCall<{ ms: number; pagesIn: number }>(
      { ...g, agent: f.to },
      "vm.gather",
      {
        name,
      },
    );
    report(
      g,
      { name, to: f.to, ...r },
      () =>
        `${name} gathered onto ${f.to}: ${fmtBytes(r.pagesIn * PAGE_SIZE)} brought back in ${
          (r.ms / 1000).toFixed(1)
        } s`,
    );
    return EXIT.OK;
  }
  if (f.moveSub) {
    const m = /^([^=]+)=([^=]+)$/.exec(f.moveSub);
    if (!m) throw new UsageError(`--move-sub ${f.moveSub}: use OLD=NEW, both HOST:PORT`);
    checkAddress("--move-sub", m[1]);
    checkAddress("--move-sub", m[2]);
    if (f.sub || f.mainMem) {
      throw new UsageError("--move-sub does not combine with --sub or --main-mem");
    }
    const main = f.main ?? agentAddr(g);
    if (!main) throw new UsageError("--move-sub needs --main HOST:PORT: the host running the VM");
    const r = await remoteCall<{ ms: number; pages: number }>({ ...g, agent: main }, "vm.movesub", {
      name,
      from: m[1],
      to: m[2],
    });
    report(
      g,
      { name, from: m[1], to: m[2], ...r },
      () =>
        `${name}: ${fmtBytes(r.pages * PAGE_SIZE)} moved from ${m[1]} to ${m[2]} in ${
          (r.ms / 1000).toFixed(1)
        } s`,
    );
    return EXIT.OK;
  }
  const split = splitTarget(f.main ?? agentAddr(g), f.sub, f.mainMem);
  if (!split) {
    throw new UsageError(
      "migrate needs --main A --sub B,C --main-mem SIZE, --to A, or --main A --move-sub B=D",
    );
  }
  const r = await remoteCall<SplitReport>({ ...g, agent: split.main }, "vm.split", {
    name,
    split: { mainMemBytes: split.mainMemBytes, subs: split.subs },
  });
  report(
    g,
    { name, ...split, ...r },
    () =>
      `${name} split in ${(r.ms / 1000).toFixed(1)} s (downtime ${
        r.downtimeMs.toFixed(1)
      } ms, ${r.rounds} rounds): ${fmtBytes(r.keptOnMain * PAGE_SIZE)} kept on ${split.main}, ${
        fmtBytes(r.pagesSent * PAGE_SIZE)
      } copied to ${split.subs.join(", ")}`,
  );
  return EXIT.OK;
}
