/** `dcres run`: run a VM in the foreground (console on the terminal) or detached as a `dcres vmm`. */
import { checkGuestSupported, type GuestKind, GUESTS, type MachineSpec } from "../vmm/machine.ts";
import { hostVm } from "../vmm_process/host_vm.ts";
import type { AccessPattern } from "../vmm/guests/memstamp/memstamp.ts";
import { findGuestKernel } from "../vmm/boot/initramfs.ts";
import { basename } from "node:path";
import { checkName } from "../codec/names.ts";
import {
  CommandFailed,
  EXIT,
  type GlobalOptions,
  report,
  showProgress,
  stateDirOf,
} from "./context.ts";
import { fmtBytes, parseCount, parseDuration, parseSize, UsageError } from "./units.ts";
import { spawnVmm } from "../agent/spawn.ts";
import { agentAddr, remoteCall } from "./remote.ts";
import { type SplitTarget, splitTarget } from "./split_flags.ts";
import type { VmInfo } from "../vmm/control/protocol.ts";
import { ConsoleRelay } from "./terminal.ts";
import {
  noteSlowGuestKernel,
  openAcceleratorFlag,
  remoteAccel,
  vmmAccelArgs,
} from "./accel_flag.ts";
import { PAGE_SIZE } from "../accel/accel.ts";

/** Flags of `dcres run`. */
export interface RunFlags {
  guest: string;
  mem: string;
  vcpus: string;
  name?: string;
  kernel?: string;
  initrd?: string;
  cmdline?: string;
  for?: string;
  detach?: boolean;
  exec?: string;
  ws?: string;
  pattern?: string;
  stride?: string;
  delay?: string;
  timerHz?: string;
  main?: string;
  sub?: string;
  mainMem?: string;
  accel?: string;
}

const PATTERNS: AccessPattern[] = ["seq", "random", "hotcold"];
const DEFAULT_CMDLINE = "console=ttyS0 earlyprintk=serial,ttyS0,115200 panic=-1 reboot=k noapic";

/** Turns flags into a machine spec, or throws UsageError naming the bad flag. */
export function specFromFlags(f: RunFlags): MachineSpec {
  if (!(GUESTS as readonly string[]).includes(f.guest)) {
    throw new UsageError(`--guest ${f.guest}: unknown guest; use one of: ${GUESTS.join(", ")}`);
  }
  const guest = f.guest as GuestKind;
  const memSize = parseSize("--mem", f.mem);
  if (memSize % PAGE_SIZE !== 0) throw new UsageError(`--mem ${f.mem}: must be a multiple of 4K`);
  const vcpus = parseCount("--vcpus", f.vcpus);
  const name = f.name ?? `${guest}-${crypto.randomUUID().slice(0, 6)}`;
  try {
    checkName("vm", "--name", name);
  } catch (e) {
    throw new UsageError((e as Error).message);
  }
  const spec: MachineSpec = { name, guest, memSize, vcpus };
  if (guest === "memstamp") {
    if (f.pattern && !PATTERNS.includes(f.pattern as AccessPattern)) {
      throw new UsageError(`--pattern ${f.pattern}: use one of: ${PATTERNS.join(", ")}`);
    }
    spec.memstamp = {
      workingSet: f.ws ? parseSize("--ws", f.ws) : undefined,
      pattern: f.pattern as AccessPattern | undefined,
      stride: f.stride ? parseCount("--stride", f.stride) : undefined,
      delay: f.delay !== undefined ? Number(f.delay) : undefined,
      timerHz: f.timerHz !== undefined ? Number(f.timerHz) : undefined,
    };
  } else {
    const kernel = f.kernel ?? findGuestKernel();
    if (!kernel) {
      throw new UsageError(
        "--kernel: no kernel given and none in /boot; install linux-image-cloud-amd64 or pass --kernel FILE",
      );
    }
    const initrd = f.initrd ?? defaultInitrd();
    spec.linux = { kernel, initrd, cmdline: f.cmdline ?? DEFAULT_CMDLINE };
  }
  return spec;
}

/**
 * `spec` as an agent takes it: a kernel or initrd this CLI chose by default goes by its file name,
 * which the agent finds in its guest directory (it reads guest files from nowhere else).
 */
function agentSpec(spec: MachineSpec, f: RunFlags): MachineSpec {
  if (!spec.linux) return spec;
  const l = spec.linux;
  return {
    ...spec,
    linux: {
      ...l,
      kernel: f.kernel ?? basename(l.kernel),
      initrd: f.initrd ?? (l.initrd === undefined ? undefined : basename(l.initrd)),
    },
  };
}

function defaultInitrd(): string | undefined {
  const p = new URL("../../target/guest/initramfs.cpio.gz", import.meta.url).pathname;
  try {
    Deno.statSync(p);
    return p;
  } catch {
    return undefined;
  }
}

/** The split of `vm start --main A --sub B,C --main-mem SIZE`, or undefined for a one-host VM. */
function splitFromFlags(g: GlobalOptions, f: RunFlags, spec: MachineSpec): SplitTarget | undefined {
  if (!f.sub && !f.mainMem && !f.main) return undefined;
  const split = splitTarget(f.main ?? agentAddr(g), f.sub, f.mainMem)!;
  if (split.mainMemBytes >= spec.memSize) {
    throw new UsageError(
      `--main-mem ${f.mainMem} is not less than --mem ${
        fmtBytes(spec.memSize)
      }; a VM that fits needs no --sub`,
    );
  }
  if (spec.guest !== "memstamp") {
    throw new UsageError("--sub: split VMs run memstamp guests for now");
  }
  return split;
}

function reportStarted(g: GlobalOptions, spec: MachineSpec, info: VmInfo) {
  report(
    g,
    info,
    () =>
      `started ${info.name} (${spec.guest}, ${
        fmtBytes(spec.memSize)
      }, ${spec.vcpus} vCPU, ${info.accel}) as pid ${info.pid}`,
  );
}

/** Runs `dcres run`. */
export async function runCommand(g: GlobalOptions, f: RunFlags): Promise<number> {
  const spec = specFromFlags(f);
  const forMs = f.for ? parseDuration("--for", f.for) : undefined;
  if (f.exec && spec.guest !== "linux") {
    throw new UsageError("--exec needs --guest linux (memstamp has no shell)");
  }
  if (f.exec && f.detach) throw new UsageError("--exec and --detach cannot be combined");
  const stateDir = stateDirOf(g);
  const split = splitFromFlags(g, f, spec);
  if (split) {
    const info = await remoteCall<VmInfo>({ ...g, agent: split.main }, "vm.start", {
      spec: agentSpec(spec, f),
      forMs,
      split: { mainMemBytes: split.mainMemBytes, subs: split.subs },
      ...remoteAccel(f.accel),
    });
    report(
      g,
      info,
      () =>
        `started ${info.name} (${spec.guest}, ${
          fmtBytes(spec.memSize)
        }, ${spec.vcpus} vCPU, ${info.accel}) on ${split.main}, ${
          fmtBytes(split.mainMemBytes)
        } resident there, the rest on ${split.subs.join(", ")}`,
    );
    return EXIT.OK;
  }
  if (agentAddr(g)) {
    const info = await remoteCall<VmInfo>(g, "vm.start", {
      spec: agentSpec(spec, f),
      forMs,
      ...remoteAccel(f.accel),
    });
    reportStarted(g, spec, info);
    return EXIT.OK;
  }
  const accel = openAcceleratorFlag(f.accel);
  if (spec.guest !== "linux" || accel.capabilities.linuxGuest) noteSlowGuestKernel(accel);
  if (f.detach) {
    // Refused here, not in the VMM's log; in the foreground, Machine.create refuses it.
    checkGuestSupported(spec.guest, accel);
    reportStarted(g, spec, await spawnVmm(spec, stateDir, forMs, vmmAccelArgs(accel)));
    return EXIT.OK;
  }
  const relay = spec.guest === "linux" && !f.exec && !g.json ? new ConsoleRelay() : undefined;
  let execResult: { output: string; status: number } | undefined;
  let progress: ReturnType<typeof setInterval> | undefined;
  const rep = await hostVm({ kind: "boot", spec }, {
    accel,
    stateDir,
    forMs,
    serialOut: relay ? (b) => relay.write(b) : undefined,
    onStarted: async (m, server) => {
      relay?.attach((bytes) => m.serial.enqueueInput(bytes));
      if (spec.guest === "memstamp" && showProgress(g)) {
        const t0 = performance.now();
        progress = setInterval(() => {
          const st = m.memstamp!.statuses();
          const written = st.reduce((a, s) => a + Number(s.written), 0);
          const stamped = st.reduce((a, s) => a + Number(s.stamped), 0);
          const secs = (performance.now() - t0) / 1000;
          Deno.stderr.writeSync(new TextEncoder().encode(
            `\r${spec.name}: stamped ${stamped} pages, rewritten ${written} (${
              Math.round(written / secs)
            }/s), ticks ${st.map((s) => s.ticks).join("/")}   `,
          ));
        }, 500);
      }
      if (f.exec) {
        try {
          execResult = await server.exec(f.exec, forMs ?? 600_000);
        } finally {
          await m.vm.stop({ reason: "stopped", detail: "--exec finished" });
        }
      }
    },
  });
  clearInterval(progress);
  relay?.close();
  if (progress !== undefined) Deno.stderr.writeSync(new TextEncoder().encode("\n"));
  if (execResult) {
    if (g.json) report(g, { ...rep, ...execResult }, () => "");
    else console.log(execResult.output);
    return execResult.status;
  }
  report(
    g,
    rep,
    () =>
      `${rep.name}: ${rep.exit.reason} (${rep.exit.detail}) after ${
        (rep.ranMs / 1000).toFixed(1)
      } s`,
  );
  if (rep.exit.reason === "error") throw new CommandFailed(`${rep.name}: ${rep.exit.detail}`);
  return EXIT.OK;
}
