/** Serves a machine's control socket: info, pause/resume/stop, guest verify, console, exec. */
import { GUEST_READY_LINE } from "../boot/initramfs.ts";
import type { Machine } from "../machine.ts";
import type { ConsoleHub } from "./console_hub.ts";
import {
  CONTROL_VERSION,
  type ControlReply,
  type ControlRequest,
  toJson,
  type VmInfo,
} from "./protocol.ts";

/** Sends an interim progress line to the requester before the final reply. */
export type ProgressSink = (progress: Record<string, unknown>) => void;

/** A control operation a higher layer adds (e.g. checkpoint), given the raw request. */
export type ExtraHandler = (
  req: Record<string, unknown>,
  progress: ProgressSink,
) => Promise<unknown>;

/** Control socket server for one machine. */
export class ControlServer {
  private listener?: Deno.UnixListener;
  private readonly started = performance.now();
  private paused = false;

  constructor(
    private readonly machine: Machine,
    private readonly hub: ConsoleHub,
    private readonly onStop: () => Promise<void>,
    private readonly extra: Record<string, ExtraHandler> = {},
    /** Extra fields for `info` (e.g. restore timings). */
    private readonly infoExtra: () => Record<string, unknown> = () => ({}),
  ) {}

  /** Starts listening at `path` (replacing a stale socket file). */
  listen(path: string): void {
    try {
      Deno.removeSync(path);
    } catch {
      // No stale socket: nothing to replace.
    }
    this.listener = Deno.listen({ transport: "unix", path });
    void this.acceptLoop(this.listener);
  }

  /** Stops listening. */
  close(): void {
    try {
      this.listener?.close();
    } catch {
      // Already closed.
    }
  }

  private async acceptLoop(l: Deno.UnixListener) {
    try {
      for await (const conn of l) {
        void this.serve(conn).catch(() => {}).finally(() => safeClose(conn));
      }
    } catch {
      // Listener closed.
    }
  }

  /** Current VM info. */
  info(): VmInfo {
    const m = this.machine;
    const ms = m.memstamp;
    const statuses = ms?.statuses();
    return {
      name: m.spec.name,
      guest: m.spec.guest,
      accel: m.vm.accelKind,
      memSize: m.spec.memSize,
      vcpus: m.spec.vcpus,
      pid: Deno.pid,
      state: m.vm.isStopped ? "stopped" : this.paused ? "paused" : "running",
      uptimeMs: Math.round(performance.now() - this.started),
      exits: m.vm.vcpus.map((v) => v.exits),
      ...this.infoExtra(),
      memstamp: statuses && {
        phase: statuses.map((s) => s.phase),
        written: Number(statuses.reduce((a, s) => a + s.written, 0n)),
        ticks: statuses.map((s) => Number(s.ticks)),
      },
    };
  }

  private async serve(conn: Deno.UnixConn) {
    const reader = conn.readable.getReader();
    const enc = new TextEncoder();
    let buf = "";
    const dec = new TextDecoder();
    for (;;) {
      const nl = buf.indexOf("\n");
      if (nl < 0) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += dec.decode(value, { stream: true });
        if (buf.length > 1 << 20) throw new Error("control request too large");
        continue;
      }
      const line = buf.slice(0, nl);
      buf = buf.slice(nl + 1);
      let req: ControlRequest;
      try {
        req = JSON.parse(line);
      } catch {
        await write(conn, { ok: false, error: "malformed control request (not JSON)" });
        continue;
      }
      if (req.op === "console") {
        await write(conn, { ok: true, result: null });
        await this.console(conn, reader, enc.encode(buf));
        return;
      }
      const progress: ProgressSink = (p) => void write(conn, { progress: p }).catch(() => {});
      await write(conn, await this.handle(req, progress));
      if (req.op === "stop") {
        safeClose(conn);
        await this.onStop();
        return;
      }
    }
  }

  private async handle(req: ControlRequest, progress: ProgressSink): Promise<ControlReply> {
    if (typeof req?.v !== "number" || Math.floor(req.v) > CONTROL_VERSION) {
      return {
        ok: false,
        error:
          `control protocol version ${req?.v} is not supported (this VMM speaks ${CONTROL_VERSION})`,
      };
    }
    try {
      switch (req.op) {
        case "info":
          return { ok: true, result: this.info() };
        case "pause": {
          if (this.paused) return { ok: true, result: { pauseMs: 0 } };
          this.paused = true;
          const ms = await this.machine.vm.pause();
          return { ok: true, result: { pauseMs: ms } };
        }
        case "resume":
          if (this.paused) this.machine.vm.resume();
          this.paused = false;
          return { ok: true, result: null };
        case "stop":
          return { ok: true, result: null };
        case "verify": {
          const ms = this.machine.memstamp;
          if (!ms) {
            return {
              ok: false,
              error:
                `guest verify needs a memstamp guest; ${this.machine.spec.name} runs ${this.machine.spec.guest}`,
            };
          }
          if (this.paused) {
            return {
              ok: false,
              error:
                `${this.machine.spec.name} is paused; resume it first (the guest verifies itself)`,
            };
          }
          const held = this.infoExtra().pausedReason;
          if (held) return { ok: false, error: `${this.machine.spec.name} is ${held}` };
          return { ok: true, result: await ms.verify(req.timeoutMs as number | undefined) };
        }
        case "exec":
          return { ok: true, result: await this.exec(String(req.cmd), Number(req.timeoutMs)) };
        default: {
          const op = (req as { op: string }).op;
          const h = this.extra[op];
          if (!h) return { ok: false, error: `unknown control operation "${op}"` };
          return { ok: true, result: await h(req as unknown as Record<string, unknown>, progress) };
        }
      }
    } catch (e) {
      return { ok: false, error: (e as Error).message };
    }
  }

  /** Types `cmd` into the guest shell and collects its output and exit status. */
  async exec(cmd: string, timeoutMs: number): Promise<{ output: string; status: number }> {
    if (this.machine.spec.guest !== "linux") {
      throw new Error(
        `exec needs a guest with a shell; ${this.machine.spec.name} runs ${this.machine.spec.guest}`,
      );
    }
    await this.hub.waitFor(new RegExp(GUEST_READY_LINE), timeoutMs, true);
    const marker = /DCRES-EXIT:(\d+)/;
    const done = this.hub.waitFor(marker, timeoutMs);
    this.machine.serial.enqueueInput(new TextEncoder().encode(`${cmd}; echo DCRES-EXIT:$?\n`));
    const text = await done;
    const status = Number(marker.exec(text)![1]);
    const lines = text.replace(/\r/g, "").split("\n");
    const start = lines.findIndex((l) => l.includes("DCRES-EXIT:$?"));
    const end = lines.findIndex((l) => marker.test(l));
    return { output: lines.slice(start + 1, end).join("\n"), status };
  }

  private async console(
    conn: Deno.UnixConn,
    reader: ReadableStreamDefaultReader<Uint8Array>,
    pending: Uint8Array,
  ) {
    const writer = conn.writable.getWriter();
    await writer.write(this.hub.recent());
    const off = this.hub.subscribe((b) => void writer.write(b).catch(() => off()));
    if (pending.length) this.machine.serial.enqueueInput(pending);
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        this.machine.serial.enqueueInput(value);
      }
    } finally {
      off();
    }
  }
}

function safeClose(conn: Deno.UnixConn) {
  try {
    conn.close();
  } catch {
    // Already closed by the peer or by a stop.
  }
}

async function write(conn: Deno.UnixConn, reply: ControlReply | { progress: unknown }) {
  const w = conn.writable.getWriter();
  await w.write(new TextEncoder().encode(toJson(reply) + "\n"));
  w.releaseLock();
}
