/**
 * `ckpt.put` and `ckpt.push` (issue 14 items 4 and 5, issue 15 item 2): an upload declares its size and is refused before any byte
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

/** An agent's checkpoint-file methods alone, as `host`, on a store under `d`. */
async function agentAt(d: string, host: string, quotaBytes?: number) {
  await issueHost({ caDir: `${d}/ca`, host, ips: ["127.0.0.1"], outDir: `${d}/${host}` });
  const id = loadIdentity(`${d}/${host}`);
  const root = `${d}/${host}-ckpt`;
  Deno.mkdirSync(root);
  const connect = (addr: string) => RpcClient.connect(addr, id);
  const server = new RpcServer(
    id,
    ckptFileHandlers(root, (p) => String(p), connect, quotaBytes),
    { hostname: "127.0.0.1", port: 0 },
  );
  server.start();
  return { root, server, addr: `127.0.0.1:${server.addr.port}` };
}

async function setup(quotaBytes?: number) {
  const d = Deno.makeTempDirSync({ prefix: "dcres-upload-" });
  await initCa(`${d}/ca`);
  await issueHost({ caDir: `${d}/ca`, host: "alice", role: "operator", outDir: `${d}/op` });
  const { root, server } = await agentAt(d, "agent1", quotaBytes);
  const c = await RpcClient.connect(`127.0.0.1:${server.addr.port}`, loadIdentity(`${d}/op`));
  return { d, root, server, c };
}

Deno.test("a store file pushed agent to agent arrives whole; a push that broke resumes from what arrived; a committed generation is never replaced", async () => {
  const { d, root, server, c } = await setup();
  const b = await agentAt(d, "agent2");
  try {
    const total = 3 * MiB + 12345;
    const bytes = new Uint8Array(total).map((_, i) => (i * 31) >>> 3);
    const file = "g000001/agent1.frag";
    Deno.mkdirSync(`${root}/s/g000001`, { recursive: true });
    Deno.writeFileSync(`${root}/s/${file}`, bytes);
    // A push that broke after 1 MiB left it aside; the target says so, and the next push resumes.
    Deno.mkdirSync(`${b.root}/s/g000001`, { recursive: true });
    Deno.writeFileSync(`${b.root}/s/${file}.part`, bytes.subarray(0, MiB));
    const target = await RpcClient.connect(b.addr, loadIdentity(`${d}/op`));
    try {
      const have = await target.call<{ partial: Record<string, number> }>("ckpt.have", {
        store: "s",
        files: [file],
      });
      assertEquals(have.partial, { [file]: MiB });
      const wrong = await assertRejects(
        () => c.call("ckpt.push", { store: "s", file, to: b.addr, offset: 5 }),
        RpcError,
      );
      assert(/push from 1048576/.test(wrong.message), wrong.message);
      const r = await c.call<{ bytes: number }>("ckpt.push", {
        store: "s",
        file,
        to: b.addr,
        offset: MiB,
      });
      assertEquals(r.bytes, total - MiB);
      assertEquals(Deno.readFileSync(`${b.root}/s/${file}`), bytes);
      assertEquals(files(`${b.root}/s/g000001`), ["agent1.frag"]);
      // Once its generation is committed there, the copy never changes.
      Deno.writeFileSync(`${b.root}/s/g000001/MANIFEST`, new Uint8Array(1));
      const again = await assertRejects(
        () => c.call("ckpt.push", { store: "s", file, to: b.addr }),
        RpcError,
      );
      assert(/committed generation/.test(again.message), again.message);
      assertEquals(Deno.readFileSync(`${b.root}/s/${file}`), bytes);
      const escape = await assertRejects(
        () => c.call("ckpt.push", { store: "s", file: "../../etc/passwd", to: b.addr }),
        RpcError,
      );
      assert(/is not gNNNNNN/.test(escape.message), escape.message);
    } finally {
      await target.close();
    }
  } finally {
    await c.close();
    server.close();
    b.server.close();
  }
});

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
