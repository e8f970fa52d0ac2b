/**
 * `deno task bench durable`: how fast a checkpoint's files move between hosts. Two agents of this
 * machine (scripts/cluster); one fragment-sized store file moved from one to the other the way a
 * restore did until now (streamed out to this CLI process and uploaded again) and agent to agent
 * (`ckpt.push`), against the raw disk write of the same bytes and plain TCP on loopback, all in one
 * run. No guest runs; the header names the accelerator this host's guests run on all the same.
 * The replicated checkpoint's figures (issue 15 item 1) come with replication.
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

/** Runs the durability benchmark and returns its JSON report. */
export async function benchDurable(): Promise<unknown> {
  const ba = BenchAccel.open();
  const bytes = Number(Deno.env.get("DCRES_BENCH_FILE_MIB") ?? 1024) * MiB;
  console.log(
    `dcres bench durable: two agents on loopback, a ${bytes / MiB} MiB store file, no guest ` +
      `(this host's guests: ${ba.describe(false)})`,
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
      console.log(
        "replicated checkpoint (1 vs 2 copies): not measured yet; replication is to come",
      );
      return {
        bench: "durable",
        accel: ba.info,
        guestDependent: false,
        date: new Date().toISOString(),
        fileBytes: bytes,
        mibPerSec: { rawDisk: disk.mibPerSec, plainTcp: tcp, throughCli: cli, agentPush: push },
      };
    } finally {
      await Promise.all([ca.close(), cb.close()]);
    }
  } finally {
    await agents.cluster("down").catch(() => {});
  }
}
