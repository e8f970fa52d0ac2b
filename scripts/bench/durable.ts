/**
 * `deno task bench durable`: how fast a checkpoint's files move between hosts. Two agents of this
 * machine (scripts/cluster); one fragment-sized store file moved from one to the other the way a
 * restore did until now (streamed out to this CLI process and uploaded again) and agent to agent
 * (`ckpt.push`), against the raw disk write of the same bytes and plain TCP on loopback, all in one
 * run; then a split VM's checkpoint with one and with two copies of every fragment, the time the
 * copies add set against the time the link needs for their bytes. The header names the
 * accelerator the guest runs on.
 */
import { join } from "node:path";
import { loadIdentity } from "../../src/net/identity.ts";
import { RpcClient } from "../../src/net/quic.ts";
import { Inbox } from "../../src/rpc/inbox.ts";
import { BenchAccel } from "./accel.ts";
import { BenchAgents } from "./agents.ts";
import { randomBytes, rawWrite } from "./disk.ts";
import { line } from "./stats.ts";

const MiB = 1 << 20;

/** Plain TCP on loopback, `bytes` in 1 MiB writes: the floor any transfer here sits on. */
async function plainTcp(bytes: number): Promise<number> {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const got = (async () => {
    const c = await listener.accept();
    let n = 0;
    for await (const b of c.readable) n += b.length;
    return n;
  })();
  const t0 = performance.now();
  const conn = await Deno.connect({
    hostname: "127.0.0.1",
    port: (listener.addr as Deno.NetAddr).port,
  });
  const w = conn.writable.getWriter();
  const chunk = new Uint8Array(MiB);
  for (let sent = 0; sent < bytes; sent += MiB) await w.write(chunk);
  await w.close();
  await got;
  listener.close();
  return bytes / MiB / ((performance.now() - t0) / 1000);
}

/** The way a restore copied a file before: out of `from` into this process, and up to `to`. */
async function throughCli(
  from: RpcClient,
  to: RpcClient,
  store: string,
  src: string,
  dst: string,
  bytes: number,
): Promise<void> {
  const pipe = new Inbox();
  const get = from.call("ckpt.get", { store, file: src }, {
    onData: (b) => pipe.push(b.slice()),
    deadlineMs: 3_600_000,
  }).then(() => pipe.end(), (e) => {
    pipe.end(e);
    throw e;
  });
  await Promise.all([
    get,
    to.call("ckpt.put", { store, file: dst, bytes }, { upload: pipe, deadlineMs: 3_600_000 }),
  ]);
}

/** What `checkpoint --json` reports that this bench reads. */
interface Taken {
  checkpoint: string;
  stats: { totalMs: number };
}

/**
 * A split VM over the two agents (main and one sub-host): a stop-mode checkpoint with one copy of
 * each fragment, then with two (each fragment streamed to the other host while written), and the
 * bytes the copies moved (every fragment once more).
 */
async function replicated(agents: BenchAgents, ba: BenchAccel, a: string, b: string) {
  const mem = ba.pick({ full: "1G", emu: "256M" });
  await agents.dcres(
    ...["--agent", a, "vm", "start", "--main", a, "--sub", b, "--name", "dv"],
    ...["--mem", mem, "--main-mem", ba.pick({ full: "256M", emu: "64M" })],
    ...["--ws", ba.pick({ full: "512M", emu: "96M" }), "--pattern", "seq"],
  );
  for (;;) {
    const v = await agents.info(a, "dv");
    if (v.memstamp!.phase.every((p) => p >= 2)) break;
    await new Promise((r) => setTimeout(r, 1000));
  }
  const take = async (replicas: number) =>
    JSON.parse(
      await agents.dcres(
        ...["--agent", a, "--json", "checkpoint", "dv", "--mode", "stop"],
        ...["--replicas", String(replicas)],
      ),
    ) as Taken;
  const one = await take(1);
  const two = await take(2);
  const info = JSON.parse(
    await agents.dcres("--agent", a, "--json", "ckpt", "inspect", two.checkpoint),
  ) as { fragments: Array<{ bytes: number; generation: number }>; generation: number };
  const extra = info.fragments.filter((f) => f.generation === info.generation)
    .reduce((n, f) => n + f.bytes, 0);
  await agents.dcres("--agent", a, "vm", "stop", "dv");
  return { mem, oneMs: one.stats.totalMs, twoMs: two.stats.totalMs, extraBytes: extra };
}

/** Runs the durability benchmark and returns its JSON report. */
export async function benchDurable(): Promise<unknown> {
  const ba = BenchAccel.open();
  const bytes = Number(Deno.env.get("DCRES_BENCH_FILE_MIB") ?? 1024) * MiB;
  console.log(
    `dcres bench durable: two agents on loopback, a ${bytes / MiB} MiB store file, then a ` +
      `split VM over both; ${ba.describe()}`,
  );
  const agents = new BenchAgents("durable", 7600);
  const [a, b] = await agents.up(2);
  try {
    const store = "bench";
    const srcDir = join(agents.dir, "node1", "data", "ckpt", store, "g000001");
    Deno.mkdirSync(srcDir, { recursive: true });
    const data = randomBytes(64 * MiB);
    const disk = rawWrite(join(srcDir, "node1.frag"), data, bytes);
    const tcp = await plainTcp(bytes);
    const id = loadIdentity(agents.clientIdentityDir);
    const [ca, cb] = await Promise.all([RpcClient.connect(a, id), RpcClient.connect(b, id)]);
    try {
      const src = "g000001/node1.frag";
      let t0 = performance.now();
      await throughCli(ca, cb, store, src, "g000002/node1.frag", bytes);
      const cli = bytes / MiB / ((performance.now() - t0) / 1000);
      t0 = performance.now();
      await ca.call("ckpt.push", { store, file: src, to: b }, { deadlineMs: 3_600_000 });
      const push = bytes / MiB / ((performance.now() - t0) / 1000);
      line("raw disk write + fdatasync (reference)", `${disk.mibPerSec.toFixed(0)} MiB/s`);
      line("plain TCP on loopback (reference)", `${tcp.toFixed(0)} MiB/s`);
      line("copy through the CLI (restore until now)", `${cli.toFixed(0)} MiB/s`, {
        x: cli / disk.mibPerSec,
        of: "raw disk",
      });
      line("push agent to agent (ckpt.push)", `${push.toFixed(0)} MiB/s`, {
        x: push / cli,
        of: "through the CLI (aim >= 2)",
      });
      const r = await replicated(agents, ba, a, b);
      // What the link needs for the copies' bytes, at the rate one agent pushes to another here.
      const linkMs = r.extraBytes / MiB / push * 1000;
      line(`split VM (${r.mem}) checkpoint, stop, 1 copy`, `${r.oneMs.toFixed(0)} ms`);
      line(`split VM (${r.mem}) checkpoint, stop, 2 copies`, `${r.twoMs.toFixed(0)} ms`, {
        x: r.twoMs / r.oneMs,
        of: "1 copy",
      });
      line(
        `  time the copies added (${(r.extraBytes / MiB).toFixed(0)} MiB copied)`,
        `${(r.twoMs - r.oneMs).toFixed(0)} ms`,
        { x: (r.twoMs - r.oneMs) / linkMs, of: `the link's time for those bytes (aim <= 1.1)` },
      );
      return {
        bench: "durable",
        accel: ba.info,
        guestDependent: true,
        date: new Date().toISOString(),
        fileBytes: bytes,
        mibPerSec: { rawDisk: disk.mibPerSec, plainTcp: tcp, throughCli: cli, agentPush: push },
        replicated: { ...r, linkMs },
      };
    } finally {
      await Promise.all([ca.close(), cb.close()]);
    }
  } finally {
    await agents.cluster("down").catch(() => {});
  }
}
