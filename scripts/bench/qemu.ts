/**
 * QEMU reference for the checkpoint benchmark: a stopped QEMU guest whose RAM is filled from a file
 * of random bytes (`-device loader`), checkpointed with migrate-to-file over QMP (the way `virsh
 * save` does it: stopped VM, unlimited bandwidth, file made durable) and restored with `-incoming`.
 * The guest never runs its own code (-S), so PVM's slow guest kernel does not matter. QEMU runs on
 * KVM (`-enable-kvm`) when dcres does, and on its own emulator (`-accel tcg`) when dcres runs on the
 * emulated CPU, so the two peers share the CPU backend's kind.
 */
import { existsSync } from "node:fs";

const MiB = 1 << 20;
const QEMU = "qemu-system-x86_64";
const sleep = (t: number) => new Promise((r) => setTimeout(r, t));

/** A minimal QMP client on a unix socket: one command at a time, events skipped. */
export class Qmp {
  private buf = "";
  private readonly reader: ReadableStreamDefaultReader<Uint8Array>;
  private readonly dec = new TextDecoder();
  private readonly enc = new TextEncoder();

  private constructor(private readonly conn: Deno.UnixConn) {
    this.reader = conn.readable.getReader();
  }

  /** Connects (retrying until `deadline`, a performance.now() time) and negotiates capabilities. */
  static async connect(path: string, deadline: number, alive: () => boolean): Promise<Qmp> {
    for (;;) {
      try {
        const q = new Qmp(await Deno.connect({ transport: "unix", path }));
        await q.next(); // greeting
        await q.execute("qmp_capabilities");
        return q;
      } catch (e) {
        if (!alive()) throw new Error("QEMU exited before its QMP socket answered");
        if (performance.now() > deadline) throw new Error(`QMP ${path}: ${e}`);
        await sleep(5);
      }
    }
  }

  private async next(): Promise<Record<string, unknown>> {
    for (;;) {
      const nl = this.buf.indexOf("\n");
      if (nl >= 0) {
        const lineText = this.buf.slice(0, nl).trim();
        this.buf = this.buf.slice(nl + 1);
        if (lineText) return JSON.parse(lineText);
        continue;
      }
      const { value, done } = await this.reader.read();
      if (done) throw new Error("QMP connection closed");
      this.buf += this.dec.decode(value, { stream: true });
    }
  }

  /** Runs one command; resolves with its "return" value, rejects with its "error". */
  async execute(command: string, args?: Record<string, unknown>): Promise<unknown> {
    const msg = args ? { execute: command, arguments: args } : { execute: command };
    await this.conn.write(this.enc.encode(JSON.stringify(msg) + "\n"));
    for (;;) {
      const r = await this.next();
      if ("event" in r) continue;
      if ("error" in r) {
        const e = r.error as { class?: string; desc?: string };
        throw new Error(`QMP ${command}: ${e.class}: ${e.desc}`);
      }
      return r.return;
    }
  }

  /** Closes the connection. */
  close(): void {
    try {
      this.conn.close();
    } catch {
      // Already closed.
    }
  }
}

/** One QEMU process with its QMP connection. */
class QemuProcess {
  private exited = false;
  private stderr = "";

  private constructor(readonly child: Deno.ChildProcess, readonly qmp: Qmp) {}

  static async start(args: string[], sock: string, timeoutMs: number): Promise<QemuProcess> {
    const child = new Deno.Command(QEMU, { args, stdin: "null", stdout: "null", stderr: "piped" })
      .spawn();
    let exited = false;
    const errText = new Response(child.stderr).text();
    child.status.then(() => (exited = true));
    try {
      const qmp = await Qmp.connect(sock, performance.now() + timeoutMs, () => !exited);
      const p = new QemuProcess(child, qmp);
      child.status.then(() => (p.exited = true));
      errText.then((t) => (p.stderr = t));
      return p;
    } catch (e) {
      if (!exited) child.kill("SIGKILL");
      await child.status;
      const why = (await errText).trim();
      throw new Error(why ? `${QEMU}: ${why}` : String(e));
    }
  }

  /** Polls `cond` on a QMP query until it is true; returns the last answer. */
  async poll<T>(
    command: string,
    done: (r: T) => boolean,
    timeoutMs: number,
    everyMs = 2,
  ): Promise<T> {
    const deadline = performance.now() + timeoutMs;
    for (;;) {
      const r = await this.qmp.execute(command) as T;
      if (done(r)) return r;
      if (this.exited) throw new Error(`QEMU exited: ${this.stderr.trim()}`);
      if (performance.now() > deadline) {
        throw new Error(`${command}: timed out after ${timeoutMs} ms: ${JSON.stringify(r)}`);
      }
      await sleep(everyMs);
    }
  }

  async quit(): Promise<void> {
    try {
      await this.qmp.execute("quit");
    } catch {
      // The connection may close before the answer.
    }
    this.qmp.close();
    const t = setTimeout(() => {
      try {
        this.child.kill("SIGKILL");
      } catch {
        // Gone.
      }
    }, 5000);
    await this.child.status;
    clearTimeout(t);
  }
}

/** What the QEMU reference measured, or why it could not run. */
export type QemuReference =
  | { ok: false; reason: string }
  | {
    ok: true;
    /** QEMU version string. */
    version: string;
    /** The accelerator QEMU ran on. */
    accel: QemuAccel;
    /** What that means for the comparison, for the report. */
    accelNote: string;
    /** Migration URI used for the checkpoint. */
    uri: string;
    /** What QEMU said to a "file:" URI ("accepted" when it has that transport). */
    fileUri: string;
    /** Random 8-byte words of guest RAM compared with the fill file, before and after. */
    samplesChecked: number;
    /** Guest RAM in MiB. */
    memMiB: number;
    /** Bytes of random data loaded into guest RAM at 1 MiB. */
    fillBytes: number;
    /** Spawn to QMP ready with RAM filled (not part of any ratio). */
    startMs: number;
    /** migrate until query-migrate said completed. */
    migrateMs: number;
    /** migrate until the file was complete and fdatasync'ed: the checkpoint time. */
    checkpointMs: number;
    /** File size. */
    fileBytes: number;
    /** fileBytes / checkpointMs. */
    mibPerSec: number;
    /** What query-migrate reported at the end (ram section). */
    ram: unknown;
    /** Spawn of the incoming QEMU until query-status left "inmigrate": the restore time. */
    restoreMs: number;
    /** The run state the restored VM reached. */
    restoredStatus: string;
    /** Whether the restore read its file from disk (page cache dropped) or from the page cache. */
    restoreFrom: "disk" | "page cache";
  };

/** QEMU's accelerator: KVM, or its own TCG emulator. */
export type QemuAccel = "kvm" | "tcg";

/** QEMU's command-line arguments and report note for `accel`. */
function accelArgs(accel: QemuAccel): { args: string[]; note: string } {
  return accel === "kvm" ? { args: ["-enable-kvm"], note: "-enable-kvm" } : {
    args: ["-accel", "tcg"],
    note: "-accel tcg (dcres runs on the emulated CPU, so the QEMU peer runs emulated too; " +
      "its guest is held stopped by -S, so only the save and load paths are timed)",
  };
}

/** QEMU's version line, or undefined when the binary is missing. */
export function qemuVersion(): string | undefined {
  try {
    const out = new Deno.Command(QEMU, { args: ["--version"], stdout: "piped", stderr: "null" })
      .outputSync();
    return new TextDecoder().decode(out.stdout).split("\n")[0].trim();
  } catch {
    return undefined;
  }
}

/**
 * Checkpoints a stopped QEMU guest of `memMiB` whose RAM holds `fillFile` at 1 MiB into
 * `dir/qemu.mig`, then restores it into a second QEMU; removes the file afterwards.
 */
export async function qemuReference(opts: {
  dir: string;
  memMiB: number;
  fillFile: string;
  evict?: (path: string) => void;
  /** The accelerator QEMU runs on (default kvm). */
  accel?: QemuAccel;
}): Promise<QemuReference> {
  const version = qemuVersion();
  if (!version) {
    return {
      ok: false,
      reason: `${QEMU} not found on PATH (Debian: apt-get install -y qemu-system-x86)`,
    };
  }
  const accel = accelArgs(opts.accel ?? "kvm");
  const fillBytes = Deno.statSync(opts.fillFile).size;
  if (fillBytes > opts.memMiB * MiB - MiB) {
    return { ok: false, reason: `fill file larger than guest RAM above 1 MiB` };
  }
  const file = `${opts.dir}/qemu.mig`;
  const done = `${file}.done`;
  const base = [...accel.args, "-m", String(opts.memMiB), "-nographic", "-nodefaults", "-S"];
  const sock1 = `${opts.dir}/qmp-src.sock`;
  const sock2 = `${opts.dir}/qmp-dst.sock`;
  let src: QemuProcess | undefined;
  let dst: QemuProcess | undefined;
  try {
    const ts = performance.now();
    try {
      src = await QemuProcess.start(
        [
          ...base,
          "-qmp",
          `unix:${sock1},server=on,wait=off`,
          "-device",
          `loader,file=${opts.fillFile},addr=0x100000,force-raw=on`,
        ],
        sock1,
        120_000,
      );
    } catch (e) {
      return { ok: false, reason: (e as Error).message.split("\n")[0] };
    }
    const startMs = performance.now() - ts;
    await src.qmp.execute("migrate-set-parameters", { "max-bandwidth": 1e15 });
    const sampled = await checkSamples(src, opts.fillFile, fillBytes);
    if (sampled) return { ok: false, reason: `before the checkpoint: ${sampled}` };
    // QEMU 7.2 has no "file:" transport (it came in 8.2); try it, else use exec as libvirt does.
    let uri = `exec:cat > ${file} && touch ${done}`;
    let fileUri = "accepted";
    const t0 = performance.now();
    try {
      await src.qmp.execute("migrate", { uri: `file:${file}` });
      uri = `file:${file}`;
    } catch (e) {
      fileUri = (e as Error).message;
      await src.qmp.execute("migrate", { uri });
    }
    const info = await src.poll<{ status: string; ram?: unknown; "error-desc"?: string }>(
      "query-migrate",
      (r) => r.status === "completed" || r.status === "failed" || r.status === "cancelled",
      300_000,
    );
    const migrateMs = performance.now() - t0;
    if (info.status !== "completed") {
      return { ok: false, reason: `migration ${info.status}: ${info["error-desc"] ?? ""}` };
    }
    if (uri.startsWith("exec:")) {
      while (!existsSync(done)) await sleep(1);
    }
    const f = Deno.openSync(file, { read: true, write: true });
    f.syncDataSync();
    f.close();
    const checkpointMs = performance.now() - t0;
    const fileBytes = Deno.statSync(file).size;
    await src.quit();
    src = undefined;

    opts.evict?.(file);
    const tr = performance.now();
    dst = await QemuProcess.start(
      [
        ...base,
        "-qmp",
        `unix:${sock2},server=on,wait=off`,
        "-incoming",
        `exec:cat ${file}`,
      ],
      sock2,
      120_000,
    );
    const st = await dst.poll<{ status: string }>(
      "query-status",
      (r) => r.status !== "inmigrate",
      300_000,
      1,
    );
    const restoreMs = performance.now() - tr;
    const mig = await dst.qmp.execute("query-migrate") as { status?: string };
    if (st.status === "inmigrate" || (mig.status && mig.status !== "completed")) {
      return { ok: false, reason: `incoming migration ended as ${mig.status}, VM ${st.status}` };
    }
    const bad = await checkSamples(dst, opts.fillFile, fillBytes);
    if (bad) return { ok: false, reason: `restored QEMU guest RAM is wrong: ${bad}` };
    return {
      ok: true,
      version,
      accel: opts.accel ?? "kvm",
      accelNote: accel.note,
      uri: uri.replaceAll(opts.dir, "$DIR"),
      fileUri,
      samplesChecked: SAMPLES,
      memMiB: opts.memMiB,
      fillBytes,
      startMs,
      migrateMs,
      checkpointMs,
      fileBytes,
      mibPerSec: fileBytes / MiB / (checkpointMs / 1000),
      ram: info.ram,
      restoreMs,
      restoredStatus: st.status,
      restoreFrom: opts.evict ? "disk" : "page cache",
    };
  } catch (e) {
    return { ok: false, reason: (e as Error).message };
  } finally {
    await src?.quit();
    await dst?.quit();
    for (const p of [file, done, sock1, sock2]) {
      try {
        Deno.removeSync(p);
      } catch {
        // Not created.
      }
    }
  }
}

const SAMPLES = 64;

/**
 * Compares SAMPLES random 8-byte words of guest RAM (read with the monitor's `xp`) with the fill
 * file; returns a description of the first mismatch, or undefined when all match.
 */
async function checkSamples(
  q: QemuProcess,
  fillFile: string,
  fillBytes: number,
): Promise<string | undefined> {
  const f = Deno.openSync(fillFile, { read: true });
  try {
    const word = new Uint8Array(8);
    for (let i = 0; i < SAMPLES; i++) {
      const off = Math.floor(Math.random() * (fillBytes / 8)) * 8;
      f.seekSync(off, Deno.SeekMode.Start);
      let n = 0;
      while (n < 8) n += f.readSync(word.subarray(n)) ?? 8;
      const want = new DataView(word.buffer).getBigUint64(0, true);
      const addr = 0x100000 + off;
      const out = await q.qmp.execute("human-monitor-command", {
        "command-line": `xp /1gx 0x${addr.toString(16)}`,
      }) as string;
      const m = /:\s*0x([0-9a-f]+)/i.exec(out);
      const got = m ? BigInt(`0x${m[1]}`) : undefined;
      if (got !== want) {
        return `at guest physical 0x${addr.toString(16)}: expected 0x${want.toString(16)}, ` +
          `QEMU shows ${out.trim()}`;
      }
    }
    return undefined;
  } finally {
    f.close();
  }
}
