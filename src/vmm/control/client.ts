/** Client side of a VMM's control socket, and discovery of VMs in a state directory. */
import { within } from "../../rpc/deadline.ts";
import { join } from "node:path";
import { fromWireError, RpcError, type RpcErrorCode } from "../../rpc/errors.ts";
import { closeQuietly } from "../../rpc/unix_server.ts";
import { LineReader } from "./lines.ts";
import { checkName } from "../../codec/names.ts";
import {
  CONTROL_VERSION,
  type ControlReply,
  type ControlRequest,
  encodeLine,
  type VmInfo,
  VmNotFoundError,
} from "./protocol.ts";

/** The default state directory: $XDG_RUNTIME_DIR/dcres, else /run/dcres. */
export function defaultStateDir(): string {
  const xdg = Deno.env.get("XDG_RUNTIME_DIR");
  return xdg ? join(xdg, "dcres") : "/run/dcres";
}

/** Path of a VM's control socket; a name outside the VM grammar is refused, never joined. */
export function socketPath(stateDir: string, name: string): string {
  return join(stateDir, `${checkName("vm", "VM name", name)}.sock`);
}

/** A VMM refused or failed a request; the message is the VMM's, the code its typed reason. */
export class ControlError extends RpcError {
  constructor(code: RpcErrorCode, message: string) {
    super(code, message);
    this.name = "ControlError";
  }
}

type Req = ControlRequest extends infer R ? R extends { v: number } ? Omit<R, "v"> : never : never;

/** Connects to a VM's control socket, or throws VmNotFoundError. */
export async function connectVm(stateDir: string, name: string): Promise<Deno.UnixConn> {
  const path = socketPath(stateDir, name);
  try {
    return await Deno.connect({ transport: "unix", path });
  } catch {
    throw new VmNotFoundError(name, stateDir);
  }
}

/** Sends one request on a fresh connection and returns the result; progress lines go to `onProgress`. */
export async function request<T>(
  stateDir: string,
  name: string,
  req: Req,
  onProgress?: (p: Record<string, number>) => void,
  signal?: AbortSignal,
): Promise<T> {
  const conn = await connectVm(stateDir, name);
  // Closing the connection is how a caller gives up: the VMM cancels the call, the read here ends.
  const giveUp = () => closeQuietly(conn);
  signal?.addEventListener("abort", giveUp, { once: true });
  // A signal that aborted while connecting fires no event any more.
  if (signal?.aborted) giveUp();
  const cancelled = () => new ControlError("cancelled", `VM ${name}: the request was cancelled`);
  try {
    await conn.write(encodeLine({ v: CONTROL_VERSION, ...req }));
    const lines = new LineReader(conn.readable);
    for (;;) {
      const reply = await lines.next();
      if (reply === undefined) {
        if (signal?.aborted) throw cancelled();
        if (req.op === "stop") return null as T;
        throw new ControlError(
          "failed",
          `VM ${name}: its VMM closed the connection without answering (did it crash? see its log)`,
        );
      }
      const r = JSON.parse(reply) as ControlReply<T> | { progress: Record<string, number> };
      if ("progress" in r) {
        onProgress?.(r.progress);
        continue;
      }
      if (!r.ok) throw controlError(name, r);
      return r.result;
    }
  } catch (e) {
    if (signal?.aborted) throw cancelled();
    throw e;
  } finally {
    signal?.removeEventListener("abort", giveUp);
    closeQuietly(conn);
  }
}

/** The typed error of a refusal; a VMM of an earlier build sends no code, which reads as "failed". */
function controlError(name: string, r: { error: string; code?: RpcErrorCode }): ControlError {
  const e = fromWireError({ code: r.code, message: r.error });
  return new ControlError(e.code, `VM ${name}: ${e.message}`);
}

/** A VM's serial console: keystrokes are written to `conn`, guest output comes from `output`. */
export interface ConsoleStream {
  /** The control connection, a raw byte stream now; closing it leaves the console. */
  conn: Deno.UnixConn;
  /** Guest serial output: recent history first, then live, until the connection ends. */
  output: AsyncIterable<Uint8Array>;
}

/** Attaches to the serial console of VM `name`. */
export async function openConsole(stateDir: string, name: string): Promise<ConsoleStream> {
  const conn = await connectVm(stateDir, name);
  try {
    await conn.write(encodeLine({ v: CONTROL_VERSION, op: "console" }));
    const lines = new LineReader(conn.readable);
    const reply = await lines.next();
    if (reply === undefined) {
      throw new ControlError("failed", `VM ${name}: its VMM closed the console (see its log)`);
    }
    const r = JSON.parse(reply) as ControlReply;
    if (!r.ok) throw controlError(name, r);
    return { conn, output: lines.raw() };
  } catch (e) {
    closeQuietly(conn);
    throw e;
  }
}

/** Every live VM in the state directory; sockets whose VMM is gone are removed. */
export async function listVms(stateDir: string): Promise<VmInfo[]> {
  return (await surveyVms(stateDir)).vms;
}

/** VMMs asked at once by {@link surveyVms}. */
const SURVEY_AT_ONCE = 32;

/**
 * Every live VM in the state directory, their VMMs asked a few at a time; with `withinMs`, a VMM
 * that has not answered by then is named in `unanswered` instead of holding up the caller (a hung
 * VMM must not cost its host the coordinator's lease). Sockets whose VMM is gone are removed.
 */
export async function surveyVms(
  stateDir: string,
  withinMs?: number,
): Promise<{ vms: VmInfo[]; unanswered: string[] }> {
  const vms: VmInfo[] = [], unanswered: string[] = [];
  let names: string[];
  try {
    names = [...Deno.readDirSync(stateDir)].filter((e) => e.name.endsWith(".sock"))
      .map((e) => e.name.slice(0, -5));
  } catch {
    return { vms, unanswered };
  }
  const signal = withinMs === undefined ? undefined : AbortSignal.timeout(withinMs);
  let over = false;
  const ask = async (name: string): Promise<true> => {
    try {
      const info = await request<VmInfo>(stateDir, name, { op: "info" }, undefined, signal);
      // An answer after the survey ended is not one: that VM was named unanswered.
      if (over) return true;
      // A VM told to stop answers until its process is gone; it is not running any more.
      // A VMM from before accelerators does not say: it runs on KVM.
      if (info.state !== "stopped") vms.push({ ...info, accel: info.accel ?? "kvm" });
    } catch (err) {
      if (over) return true;
      if (signal?.aborted) unanswered.push(name);
      else if (err instanceof VmNotFoundError) {
        try {
          Deno.removeSync(join(stateDir, `${name}.sock`));
        } catch {
          // Another client cleaned it.
        }
      }
    }
    return true;
  };
  const end = performance.now() + (withinMs ?? 0);
  for (let i = 0; i < names.length; i += SURVEY_AT_ONCE) {
    await Promise.all(
      names.slice(i, i + SURVEY_AT_ONCE).map(async (name) => {
        if (withinMs === undefined) return await ask(name);
        // Bounded as a whole: a connect to a VMM that accepts nothing any more does not see `signal`.
        const done = await within(ask(name), Math.max(0, end - performance.now()));
        if (!done && !unanswered.includes(name)) unanswered.push(name);
      }),
    );
  }
  over = true;
  return {
    vms: vms.sort((a, b) => a.name.localeCompare(b.name)),
    unanswered: unanswered.sort(),
  };
}
