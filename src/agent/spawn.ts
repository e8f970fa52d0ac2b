/** Starts a VM as its own detached `dcres vmm` process and waits until its control socket answers. */
import { join } from "node:path";
import type { AccelChoice } from "../accel/accel.ts";
import { request } from "../vmm/control/client.ts";
import type { VmInfo } from "../vmm/control/protocol.ts";
import type { MachineSpec } from "../vmm/machine.ts";
import { VmmStartError } from "./errors.ts";
import { VmExistsError } from "../vmm/runner.ts";
import { targetSpecOf } from "../ckpt/store.ts";
import { sleep } from "../rpc/deadline.ts";
import { checkName } from "../codec/names.ts";

/** Deno permission flags the VMM process needs. */
export const VMM_PERMISSIONS = [
  "--allow-ffi",
  "--allow-read",
  "--allow-write",
  "--allow-net",
  "--allow-run",
  "--allow-env",
  "--allow-sys",
  "--unstable-net",
];

/** argv that runs this program's CLI with `args` (works from source and from `deno compile`). */
export function selfCommand(args: string[]): { cmd: string; args: string[] } {
  const main = new URL("../../main.ts", import.meta.url);
  if (main.protocol !== "file:" || main.pathname.includes("deno-compile")) {
    return { cmd: Deno.execPath(), args };
  }
  return {
    cmd: Deno.execPath(),
    args: ["run", "--quiet", ...VMM_PERMISSIONS, main.pathname, ...args],
  };
}

/** Starts `self` as a detached process of its own (it outlives us), output appended to `log`. */
export function spawnDetached(
  self: { cmd: string; args: string[] },
  log: string,
): Deno.ChildProcess {
  const child = new Deno.Command("sh", {
    args: ["-c", 'exec "$0" "$@" >>"$DCRES_LOG" 2>&1', self.cmd, ...self.args],
    env: { DCRES_LOG: log },
    stdin: "null",
    stdout: "null",
    stderr: "null",
    detached: true,
  }).spawn();
  child.unref();
  return child;
}

/** Spawns `dcres vmm` for `spec`; resolves with its info once it serves requests. */
export async function spawnVmm(
  spec: MachineSpec,
  stateDir: string,
  forMs?: number,
  extraArgs: string[] = [],
): Promise<VmInfo> {
  // The name makes the socket's and the log's paths: refused here before anything is created.
  checkName("vm", "VM name", spec.name);
  Deno.mkdirSync(stateDir, { recursive: true });
  try {
    await request<VmInfo>(stateDir, spec.name, { op: "info" });
    throw new VmExistsError(spec.name);
  } catch (e) {
    if (e instanceof VmExistsError) throw e;
  }
  const log = join(stateDir, `${spec.name}.log`);
  const self = selfCommand([
    "--state-dir",
    stateDir,
    "vmm",
    "--spec",
    JSON.stringify(spec),
    ...(forMs ? ["--for-ms", String(forMs)] : []),
    ...extraArgs,
  ]);
  const child = spawnDetached(self, log);
  let exited: Deno.CommandStatus | undefined;
  child.status.then((s) => (exited = s));
  const deadline = performance.now() + 60_000;
  while (performance.now() < deadline) {
    try {
      const info = await request<VmInfo>(stateDir, spec.name, { op: "info" });
      if (info.pid === child.pid) return info;
    } catch {
      if (exited) {
        throw new VmmStartError(`${spec.name}: the VMM process exited at start: ${lastLine(log)}`);
      }
    }
    await sleep(50);
  }
  throw new VmmStartError(`${spec.name}: the VMM did not answer within 60 s; see ${log}`);
}

function lastLine(path: string): string {
  try {
    const lines = Deno.readTextFileSync(path).trim().split("\n");
    return lines[lines.length - 1] || "(no output)";
  } catch {
    return "(no log)";
  }
}

/**
 * Restores the checkpoint at `path` as its own `dcres vmm` process (on `opts.accel`; without it,
 * `$DCRES_ACCEL` or auto) and waits (up to 2 min) until its memory is fully resident; returns the
 * VM's name, pid and restore timings.
 */
export async function spawnRestore(
  path: string,
  stateDir: string,
  opts: { name?: string; lazy?: boolean; forMs?: number; split?: string; accel?: AccelChoice },
): Promise<{ name: string; pid: number } & Partial<NonNullable<VmInfo["restore"]>>> {
  const spec = targetSpecOf(path, opts.name);
  let info = await spawnVmm(spec, stateDir, opts.forMs, [
    "--restore",
    path,
    ...(opts.lazy ? ["--lazy"] : []),
    ...(opts.split ? ["--split", opts.split] : []),
    ...(opts.accel ? ["--accel", opts.accel] : []),
  ]);
  const deadline = performance.now() + 120_000;
  while (info.restore?.residentMs === undefined && performance.now() < deadline) {
    await sleep(50);
    info = await request<VmInfo>(stateDir, spec.name, { op: "info" });
    if (info.restore?.failed) {
      // The VM stops itself; its name is free again once its process has gone.
      await gone(stateDir, spec.name);
      throw new VmmStartError(`${spec.name}: the lazy restore failed: ${info.restore.failed}`);
    }
  }
  return { name: spec.name, pid: info.pid, ...info.restore };
}

/** Resolves once VM `name`'s control socket stops answering (at most 30 s). */
async function gone(stateDir: string, name: string): Promise<void> {
  const deadline = performance.now() + 30_000;
  while (performance.now() < deadline) {
    try {
      await request<VmInfo>(stateDir, name, { op: "info" });
    } catch {
      return;
    }
    await sleep(50);
  }
}
