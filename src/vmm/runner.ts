/**
 * Runs one machine in this process until it stops: control socket in the state directory, orderly
 * shutdown on SIGINT/SIGTERM, guest reset or halt, or the end of `--for`.
 */
import type { Accelerator } from "../accel/accel.ts";
import { ConsoleHub } from "./control/console_hub.ts";
import { connectVm, socketPath } from "./control/client.ts";
import { ControlServer, type ExtraHandler } from "./control/server.ts";
import { Machine, type MachineIo, type MachineSpec } from "./machine.ts";
import type { VmExit } from "./vm.ts";

/** How to run. */
export interface RunOptions {
  /** Directory of control sockets. */
  stateDir: string;
  /** Stop after this many ms. */
  forMs?: number;
  /** Receives guest serial output as it arrives. */
  serialOut?: (b: Uint8Array) => void;
  /** Called once the vCPUs run, with the machine and its control server. */
  onStarted?: (m: Machine, server: ControlServer) => void | Promise<void>;
  /** The accelerator `spec` boots on (default: `openAccelerator()`); `build` picks its own. */
  accel?: Accelerator;
  /** Builds the machine (e.g. from a checkpoint) instead of booting `spec`. */
  build?: (io: MachineIo) => Machine | Promise<Machine>;
  /** Control operations a higher layer adds (checkpoint). */
  handlers?: (m: Machine) => Record<string, ExtraHandler>;
  /** Extra `info` fields. */
  info?: () => Record<string, unknown>;
}

/** What happened, for the final report. */
export interface RunReport {
  /** VM name. */
  name: string;
  /** Why it stopped. */
  exit: VmExit;
  /** ms from the start of `runMachine` until the vCPUs were let go. */
  startMs: number;
  /** ms the vCPUs ran. */
  ranMs: number;
  /** Wall-clock time (epoch ms) the guest was seen executing, when the guest shows it (memstamp). */
  firstInsnEpochMs?: number;
}

/** A VM of that name is already running. */
export class VmExistsError extends Error {
  constructor(name: string) {
    super(
      `a VM named "${name}" is already running; pick another --name or stop it with 'dcres vm stop ${name}'`,
    );
    this.name = "VmExistsError";
  }
}

/** Creates, starts and supervises a machine; resolves when it has stopped and been cleaned up. */
export async function runMachine(spec: MachineSpec, opts: RunOptions): Promise<RunReport> {
  const t0 = performance.now();
  Deno.mkdirSync(opts.stateDir, { recursive: true });
  const sock = socketPath(opts.stateDir, spec.name);
  try {
    (await connectVm(opts.stateDir, spec.name)).close();
    throw new VmExistsError(spec.name);
  } catch (e) {
    if (e instanceof VmExistsError) throw e;
  }
  const hub = new ConsoleHub();
  const io: MachineIo = {
    serialOut: (b) => {
      hub.push(b);
      opts.serialOut?.(b);
    },
  };
  const machine = opts.build ? await opts.build(io) : await Machine.create(spec, io, opts.accel);
  const stop = (exit?: VmExit) => machine.vm.stop(exit);
  const server = new ControlServer(machine, hub, () => stop(), opts.handlers?.(machine), opts.info);
  server.listen(sock);
  const onSignal = () => void stop({ reason: "stopped", detail: "interrupted by signal" });
  Deno.addSignalListener("SIGINT", onSignal);
  Deno.addSignalListener("SIGTERM", onSignal);
  let timer: ReturnType<typeof setTimeout> | undefined;
  try {
    await machine.vm.start();
    const started = performance.now();
    const firstInsnEpochMs = awaitFirstInstruction(machine);
    if (opts.forMs) {
      timer = setTimeout(
        () => void stop({ reason: "stopped", detail: `ran for the requested ${opts.forMs} ms` }),
        opts.forMs,
      );
    }
    const onStarted = opts.onStarted?.(machine, server);
    const exit = await machine.vm.exited;
    await onStarted;
    return {
      name: spec.name,
      exit,
      startMs: started - t0,
      ranMs: performance.now() - started,
      firstInsnEpochMs,
    };
  } finally {
    clearTimeout(timer);
    Deno.removeSignalListener("SIGINT", onSignal);
    Deno.removeSignalListener("SIGTERM", onSignal);
    server.close();
    await machine.vm.stop();
  }
}

/** Spins (at most 1 s) until memstamp's first instructions have written its phase word. */
function awaitFirstInstruction(m: Machine): number | undefined {
  const ms = m.memstamp;
  if (!ms) return undefined;
  const deadline = performance.now() + 1000;
  while (performance.now() < deadline) {
    if (ms.status(0).phase !== 0) return performance.timeOrigin + performance.now();
  }
  return undefined;
}
