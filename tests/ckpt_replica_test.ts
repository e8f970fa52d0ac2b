/**
 * A fragment's replica written while the fragment is (issue 15 item 1): the writer streams the
 * file's bytes to another agent's `ckpt.replicate` over real QUIC, and the copy there is the same
 * file, read back page by page; an abandoned fragment leaves no copy; a replica that cannot be
 * written fails the fragment in one line naming its host.
 */
import { assert, assertEquals, assertRejects } from "./helpers/assert.ts";
import { initCa, issueHost } from "../src/cli/ca_admin.ts";
import { loadIdentity } from "../src/net/identity.ts";
import { RpcClient, RpcServer } from "../src/net/quic.ts";
import { ckptFileHandlers } from "../src/agent/ckpt_files.ts";
import { FragmentWriter } from "../src/ckpt/fragment_writer.ts";
import { ReplicaSink } from "../src/net/replica_sink.ts";
import { FragmentReader } from "../src/ckpt/fragment_reader.ts";
import * as libc from "../src/ffi/libc.ts";

const PAGE = 4096;

/** A replica agent (checkpoint-file methods only) and a client of it as another agent. */
async function setup(quotaBytes?: number) {
  const d = Deno.makeTempDirSync({ prefix: "dcres-replica-" });
  await initCa(`${d}/ca`);
  for (const host of ["writer", "holder"]) {
    await issueHost({ caDir: `${d}/ca`, host, ips: ["127.0.0.1"], outDir: `${d}/${host}` });
  }
  const root = `${d}/holder-ckpt`;
  Deno.mkdirSync(root);
  const holder = loadIdentity(`${d}/holder`);
  const server = new RpcServer(
    holder,
    ckptFileHandlers(
      root,
      (p) => String(p),
      (a) => RpcClient.connect(a, holder),
      quotaBytes,
    ),
    { hostname: "127.0.0.1", port: 0 },
  );
  server.start();
  const c = await RpcClient.connect(`127.0.0.1:${server.addr.port}`, loadIdentity(`${d}/writer`));
  Deno.mkdirSync(`${d}/local/g000001`, { recursive: true });
  return { d, root, server, c };
}

/** Guest-like memory: `pages` pages, every third one zero, the rest patterned by gfn. */
function memory(pages: number): Uint8Array<ArrayBuffer> {
  const m = new Uint8Array(pages * PAGE);
  for (let g = 0; g < pages; g++) {
    if (g % 3 === 0) continue;
    m.fill((g * 7) & 0xff, g * PAGE, (g + 1) * PAGE);
    new DataView(m.buffer).setUint32(g * PAGE, g, true);
  }
  return m;
}

for (const compress of [false, true]) {
  Deno.test(`a fragment${compress ? " (zstd)" : ""} copied while it is written is the same file on the other agent, and every page reads back`, async () => {
    const { d, root, server, c } = await setup();
    try {
      const pages = 3000, mem = memory(pages);
      const src = { bytes: mem, base: libc.ptrValue(Deno.UnsafePointer.of(mem)) };
      const sink = new ReplicaSink((m, a, o) => c.call(m, a, o), {
        host: "holder",
        store: "vm1",
        file: "g000001/writer.frag",
        maxBytes: pages * PAGE + (1 << 20),
      });
      const local = `${d}/local/g000001/writer.frag`;
      const w = FragmentWriter.create(local, {
        checkpointId: new Uint8Array(16).fill(9),
        generation: 1,
        compress,
        sink,
      });
      const gfns = Array.from({ length: pages }, (_, g) => g);
      for (let i = 0; i < pages; i += 700) await w.append(gfns.slice(i, i + 700), src);
      await w.append([5], src); // saved twice: the later copy wins, on both hosts
      const sum = await w.finish();
      const copy = `${root}/vm1/g000001/writer.frag`;
      assertEquals(Deno.readFileSync(copy), Deno.readFileSync(local));
      const f = FragmentReader.open(copy);
      try {
        assertEquals(f.footerCrc, sum.footerCrc);
        const back = new Uint8Array(pages * PAGE).fill(0xee);
        f.readInto(gfns, back, libc.ptrValue(Deno.UnsafePointer.of(back)));
        for (let g = 0; g < pages; g++) {
          const at = g * PAGE;
          assert(back.subarray(at, at + PAGE).every((b, i) => b === mem[at + i]), `gfn ${g}`);
        }
        f.verifyChunks();
      } finally {
        f.close();
      }
    } finally {
      await c.close();
      server.close();
    }
  });
}

Deno.test("an abandoned fragment leaves no copy; a replica that cannot be written fails the fragment naming its host", async () => {
  const { d, root, server, c } = await setup(64 * 1024);
  try {
    const mem = memory(64);
    const src = { bytes: mem, base: libc.ptrValue(Deno.UnsafePointer.of(mem)) };
    const sinkOf = (file: string, maxBytes: number) =>
      new ReplicaSink((m, a, o) => c.call(m, a, o), {
        host: "holder",
        store: "vm1",
        file,
        maxBytes,
      });
    const id = new Uint8Array(16).fill(3);
    const a = FragmentWriter.create(`${d}/local/g000001/a.frag`, {
      checkpointId: id,
      generation: 1,
      sink: sinkOf("g000001/a.frag", 32 * 1024),
    });
    await a.append([1, 2], src);
    await a.flush();
    await a.abort();
    // The holder learns of the cancel a moment after this side: it has a few seconds to clean up.
    const left = () => {
      try {
        return [...Deno.readDirSync(`${root}/vm1/g000001`)].map((e) => e.name);
      } catch {
        return [];
      }
    };
    for (let i = 0; i < 100 && left().length; i++) await new Promise((r) => setTimeout(r, 50));
    assertEquals(left(), [], "an abandoned replica was kept");
    const b = FragmentWriter.create(`${d}/local/g000001/b.frag`, {
      checkpointId: id,
      generation: 1,
      sink: sinkOf("g000001/b.frag", 1 << 20), // over the holder's 64 KiB quota
    });
    const e = await assertRejects(async () => {
      await b.append(Array.from({ length: 64 }, (_, g) => g), src);
      await b.finish();
    });
    assert(/copy of g000001\/b\.frag on holder: .*quota/.test((e as Error).message), String(e));
    await b.abort();
  } finally {
    await c.close();
    server.close();
  }
});
