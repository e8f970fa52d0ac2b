/**
 * `ckpt.put` (issue 14 items 4 and 5): an upload declares its size and is refused before any byte
 * is written when that exceeds the store quota or the disk's free space; one that sends more than
 * it declared is cut off and leaves nothing; a large upload goes to disk as it arrives, and the
 * process's RSS is sampled throughout and printed.
 */
import { assert, assertEquals, assertRejects } from "./helpers/assert.ts";
import { initCa, issueHost } from "../src/cli/ca_admin.ts";
import { loadIdentity } from "../src/net/identity.ts";
import { RpcClient, RpcServer } from "../src/net/quic.ts";
import { ckptFileHandlers } from "../src/agent/ckpt_files.ts";
import { statvfs } from "../src/ffi/libc.ts";
import { RpcError } from "../src/rpc/errors.ts";

const MiB = 1 << 20;

async function setup(quotaBytes?: number) {
  const d = Deno.makeTempDirSync({ prefix: "dcres-upload-" });
  await initCa(`${d}/ca`);
  await issueHost({ caDir: `${d}/ca`, host: "agent1", ips: ["127.0.0.1"], outDir: `${d}/a` });
  await issueHost({ caDir: `${d}/ca`, host: "alice", role: "operator", outDir: `${d}/op` });
  const root = `${d}/ckpt`;
  Deno.mkdirSync(root);
  const server = new RpcServer(
    loadIdentity(`${d}/a`),
    ckptFileHandlers(root, (p) => String(p), quotaBytes),
    { hostname: "127.0.0.1", port: 0 },
  );
  server.start();
  const c = await RpcClient.connect(`127.0.0.1:${server.addr.port}`, loadIdentity(`${d}/op`));
  return { d, root, server, c };
}

async function* chunks(total: number, size = 256 * 1024): AsyncIterable<Uint8Array> {
  const b = new Uint8Array(size).fill(7);
  for (let o = 0; o < total; o += size) yield b.subarray(0, Math.min(size, total - o));
}

const files = (dir: string): string[] => {
  try {
    return [...Deno.readDirSync(dir)].map((e) => e.name);
  } catch {
    return [];
  }
};

Deno.test("an upload over the quota, or over the disk's free space, is refused before a byte is written; one that sends more than it declared leaves nothing", async () => {
  const { root, server, c } = await setup(4 * MiB);
  try {
    const put = (file: string, bytes: number, sent = bytes) =>
      c.call("ckpt.put", { store: "s", file, bytes }, { upload: chunks(sent) });
    assertEquals(await put("g000001/a.frag", 3 * MiB), { bytes: 3 * MiB });
    const e = await assertRejects(() => put("g000001/b.frag", 2 * MiB), RpcError);
    assert(/store quota/.test(e.message), e.message);
    assertEquals(files(`${root}/s/g000001`), ["a.frag"]);
    const free = statvfs(root).availBytes;
    const big = await assertRejects(() => put("g000001/c.frag", free + 1, 1), RpcError);
    assert(/do not fit/.test(big.message), big.message);
    const more = await assertRejects(() => put("g000001/d.frag", 1000, 5000), RpcError);
    assert(/more than the 1000 bytes declared/.test(more.message), more.message);
    await assertRejects(() => c.call("ckpt.put", { store: "s", file: "g000001/e.frag" }), RpcError);
    assertEquals(files(`${root}/s/g000001`), ["a.frag"]);
  } finally {
    c.close();
    server.close();
  }
});

Deno.test("a large upload is written as it arrives; RSS is sampled throughout", async () => {
  const { root, server, c } = await setup();
  const total = 512 * MiB;
  const base = Deno.memoryUsage().rss;
  let peak = base;
  const sampler = setInterval(() => peak = Math.max(peak, Deno.memoryUsage().rss), 20);
  try {
    const t = performance.now();
    assertEquals(
      await c.call("ckpt.put", { store: "s", file: "g000001/big.frag", bytes: total }, {
        upload: chunks(total),
      }),
      { bytes: total },
    );
    const s = (performance.now() - t) / 1000;
    assertEquals(Deno.statSync(`${root}/s/g000001/big.frag`).size, total);
    assert(peak - base < total / 2, `RSS grew ${peak - base} bytes: the upload was buffered`);
    console.log(
      `uploaded ${total / MiB} MiB in ${s.toFixed(1)} s; RSS ${
        (base / MiB).toFixed(0)
      } MiB before, ` +
        `peak ${(peak / MiB).toFixed(0)} MiB (+${
          ((peak - base) / MiB).toFixed(0)
        } MiB, client and agent in one process)`,
    );
  } finally {
    clearInterval(sampler);
    c.close();
    server.close();
    Deno.removeSync(root, { recursive: true });
  }
});
