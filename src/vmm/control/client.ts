/** Client side of a VMM's control socket, and discovery of VMs in a state directory. */
import { join } from "node:path";
import {
  CONTROL_VERSION,
  type ControlReply,
  type ControlRequest,
  type VmInfo,
  VmNotFoundError,
} from "./protocol.ts";

/** The default state directory: $XDG_RUNTIME_DIR/dcres, else /run/dcres. */
export function defaultStateDir(): string {
  const xdg = Deno.env.get("XDG_RUNTIME_DIR");
  return xdg ? join(xdg, "dcres") : "/run/dcres";
}

/** Path of a VM's control socket. */
export function socketPath(stateDir: string, name: string): string {
  return join(stateDir, `${name}.sock`);
}

/** A VMM refused or failed a request; the message is the VMM's. */
export class ControlError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "ControlError";
  }
}

type Req = ControlRequest extends infer R ? R extends { v: number } ? Omit<R, "v"> : never : never;

/** Connects to a VM's control socket, or throws VmNotFoundError. */
export async function connectVm(stateDir: string, name: string): Promise<Deno.UnixConn> {
  try {
    return await Deno.connect({ transport: "unix", path: socketPath(stateDir, name) });
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
  // Closing the connection is how a caller gives up; the pending read then ends.
  const giveUp = () => safeClose(conn);
  signal?.addEventListener("abort", giveUp, { once: true });
  try {
    await conn.write(
      new TextEncoder().encode(JSON.stringify({ v: CONTROL_VERSION, ...req }) + "\n"),
    );
    for (;;) {
      const reply = await readLine(conn);
      if (reply === undefined) {
        if (signal?.aborted) throw new ControlError(`VM ${name}: the request was cancelled`);
        if (req.op === "stop") return null as T;
        throw new ControlError(
          `VM ${name}: its VMM closed the connection without answering (did it crash? see its log)`,
        );
      }
      const r = JSON.parse(reply) as ControlReply<T> | { progress: Record<string, number> };
      if ("progress" in r) {
        onProgress?.(r.progress);
        continue;
      }
      if (!r.ok) throw new ControlError(`VM ${name}: ${r.error}`);
      return r.result;
    }
  } catch (e) {
    if (signal?.aborted) throw new ControlError(`VM ${name}: the request was cancelled`);
    throw e;
  } finally {
    signal?.removeEventListener("abort", giveUp);
    safeClose(conn);
  }
}

function safeClose(conn: Deno.Conn) {
  try {
    conn.close();
  } catch {
    // Already closed by the VMM (stop) or by a cancellation.
  }
}

/** Reads one newline-terminated line, leaving the connection positioned after it. */
export async function readLine(conn: Deno.Conn): Promise<string | undefined> {
  const bytes: number[] = [];
  const one = new Uint8Array(1);
  for (;;) {
    const n = await conn.read(one);
    if (n === null) {
      return bytes.length ? new TextDecoder().decode(new Uint8Array(bytes)) : undefined;
    }
    if (one[0] === 10) return new TextDecoder().decode(new Uint8Array(bytes));
    bytes.push(one[0]);
  }
}

/** Every live VM in the state directory; sockets whose VMM is gone are removed. */
export async function listVms(stateDir: string): Promise<VmInfo[]> {
  const out: VmInfo[] = [];
  let entries: Deno.DirEntry[];
  try {
    entries = [...Deno.readDirSync(stateDir)];
  } catch {
    return out;
  }
  for (const e of entries) {
    if (!e.name.endsWith(".sock")) continue;
    const name = e.name.slice(0, -5);
    try {
      const info = await request<VmInfo>(stateDir, name, { op: "info" });
      // A VM told to stop answers until its process is gone; it is not running any more.
      // A VMM from before accelerators does not say: it runs on KVM.
      if (info.state !== "stopped") out.push({ ...info, accel: info.accel ?? "kvm" });
    } catch (err) {
      if (err instanceof VmNotFoundError) {
        try {
          Deno.removeSync(join(stateDir, e.name));
        } catch {
          // Another client cleaned it.
        }
      }
    }
  }
  return out.sort((a, b) => a.name.localeCompare(b.name));
}
