/**
 * Serves a machine's control socket: info, pause/resume/stop, guest verify, console, exec, and the
 * operations higher layers add, as one method table under the RPC dispatcher.
 */
import { Dispatcher, type RpcContext, type RpcHandler } from "../../rpc/dispatcher.ts";
import { RpcError } from "../../rpc/errors.ts";
import { UnixSocketServer } from "../../rpc/unix_server.ts";
import { GUEST_READY_LINE } from "../boot/initramfs.ts";
import type { Machine } from "../machine.ts";
import type { ConsoleHub } from "./console_hub.ts";
import type { VmInfo } from "./protocol.ts";
import { serveControlConnection } from "./transport.ts";

/** A control operation a higher layer adds (e.g. checkpoint): a dispatcher handler. */
export type ExtraHandler = RpcHandler;

/** Control socket server for one machine. */
export class ControlServer {
  readonly #machine: Machine;
  readonly #hub: ConsoleHub;
  readonly #onStop: () => Promise<void>;
  readonly #infoExtra: () => Record<string, unknown>;
  readonly #dispatcher: Dispatcher;
  readonly #started = performance.now();
  #socket?: UnixSocketServer;
  #paused = false;

  constructor(
    machine: Machine,
    hub: ConsoleHub,
    onStop: () => Promise<void>,
    extra: Record<string, ExtraHandler> = {},
    /** Extra fields for `info` (e.g. restore timings). */
    infoExtra: () => Record<string, unknown> = () => ({}),
  ) {
    this.#machine = machine;
    this.#hub = hub;
    this.#onStop = onStop;
    this.#infoExtra = infoExtra;
    // The built-in operations win over an added one of the same name.
    this.#dispatcher = new Dispatcher({ ...extra, ...this.#builtins() });
  }

  /** Starts listening at `path` (replacing a stale socket file). */
  listen(path: string): void {
    this.#socket = new UnixSocketServer(
      path,
      (conn) =>
        serveControlConnection(conn, this.#dispatcher, {
          streaming: new Set(["console"]),
          afterReply: { stop: () => this.#onStop() },
        }),
    );
  }

  /** Stops listening and removes the socket file. */
  close(): void {
    this.#socket?.close();
  }

  /** Current VM info. */
  info(): VmInfo {
    const m = this.#machine;
    const ms = m.memstamp;
    const statuses = ms?.statuses();
    return {
      name: m.spec.name,
      guest: m.spec.guest,
      accel: m.vm.accelKind,
      memSize: m.spec.memSize,
      vcpus: m.spec.vcpus,
      pid: Deno.pid,
      state: m.vm.isStopped ? "stopped" : this.#paused ? "paused" : "running",
      uptimeMs: Math.round(performance.now() - this.#started),
      exits: m.vm.vcpus.map((v) => v.exits),
      ...this.#infoExtra(),
      memstamp: statuses && {
        phase: statuses.map((s) => s.phase),
        written: Number(statuses.reduce((a, s) => a + s.written, 0n)),
        ticks: statuses.map((s) => Number(s.ticks)),
      },
    };
  }

  #builtins(): Record<string, RpcHandler> {
    return {
      info: () => Promise.resolve(this.info()),
      pause: async () => {
        if (this.#paused) return { pauseMs: 0 };
        this.#paused = true;
        return { pauseMs: await this.#machine.vm.pause() };
      },
      resume: () => {
        if (this.#paused) this.#machine.vm.resume();
        this.#paused = false;
        return Promise.resolve(null);
      },
      // The VMM goes once the reply is out (the transport's afterReply).
      stop: () => Promise.resolve(null),
      verify: (args) => this.#verify(args.timeoutMs as number | undefined),
      exec: (args) => this.exec(String(args.cmd), Number(args.timeoutMs)),
      console: (_args, ctx) => this.#console(ctx),
    };
  }

  async #verify(timeoutMs: number | undefined): Promise<unknown> {
    const { spec, memstamp } = this.#machine;
    if (!memstamp) {
      throw new RpcError(
        "bad-request",
        `guest verify needs a memstamp guest; ${spec.name} runs ${spec.guest}`,
      );
    }
    if (this.#paused) {
      throw new RpcError(
        "failed",
        `${spec.name} is paused; resume it first (the guest verifies itself)`,
      );
    }
    const held = this.#infoExtra().pausedReason;
    if (held) throw new RpcError("failed", `${spec.name} is ${held}`);
    return await memstamp.verify(timeoutMs);
  }

  /** Types `cmd` into the guest shell and collects its output and exit status. */
  async exec(cmd: string, timeoutMs: number): Promise<{ output: string; status: number }> {
    const { spec, serial } = this.#machine;
    if (spec.guest !== "linux") {
      throw new RpcError(
        "bad-request",
        `exec needs a guest with a shell; ${spec.name} runs ${spec.guest}`,
      );
    }
    await this.#hub.waitFor(new RegExp(GUEST_READY_LINE), timeoutMs, true);
    const marker = /DCRES-EXIT:(\d+)/;
    const done = this.#hub.waitFor(marker, timeoutMs);
    serial.enqueueInput(new TextEncoder().encode(`${cmd}; echo DCRES-EXIT:$?\n`));
    const text = await done;
    const status = Number(marker.exec(text)![1]);
    const lines = text.replace(/\r/g, "").split("\n");
    const start = lines.findIndex((l) => l.includes("DCRES-EXIT:$?"));
    const end = lines.findIndex((l) => marker.test(l));
    return { output: lines.slice(start + 1, end).join("\n"), status };
  }

  /** The serial console: recent output, then live output out and the caller's keystrokes in. */
  async #console(ctx: RpcContext): Promise<null> {
    await ctx.send(this.#hub.recent());
    const off = this.#hub.subscribe((b) => void ctx.send(b).catch(() => off()));
    try {
      for await (const b of ctx.data) this.#machine.serial.enqueueInput(b);
    } finally {
      off();
    }
    return null;
  }
}
