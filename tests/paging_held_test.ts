/**
 * `vm check` of a split VM of 32 GiB or more (issue 14 item 6): a sub-host's held bitmap is then
 * 1 MiB or more, over the limit of one control frame, so main asks for it as DATA frames. Over
 * real QUIC between two agent identities, with the agent's page handlers and a real page store.
 */
import { assert, assertEquals, assertRejects } from "./helpers/assert.ts";
import { initCa, issueHost } from "../src/cli/ca_admin.ts";
import { loadIdentity } from "../src/net/identity.ts";
import { RpcClient, RpcServer } from "../src/net/quic.ts";
import { MAX_CONTROL_PAYLOAD } from "../src/net/frame.ts";
import { AGENT_ACCESS } from "../src/agent/access.ts";
import { pageHandlers } from "../src/agent/pages.ts";
import { heldAsData } from "../src/agent/page_held.ts";
import { PageStores } from "../src/paging/page_store.ts";
import { SubLink } from "../src/paging/sub_link.ts";

Deno.test("a held bitmap over 1 MiB (a 36 GiB VM) reaches main as DATA frames, intact", async () => {
  const d = Deno.makeTempDirSync({ prefix: "dcres-held-" });
  await initCa(`${d}/ca`);
  for (const [host, ip] of [["sub", "127.0.0.31"], ["main", "127.0.0.32"]]) {
    await issueHost({ caDir: `${d}/ca`, host, ips: [ip], role: "agent", outDir: `${d}/${host}` });
  }
  // 36 GiB of 4 KiB pages, plus a few so the last byte of the bitmap is partial.
  const pages = 9 * 2 ** 20 + 5;
  assert(Math.ceil(pages / 8) > MAX_CONTROL_PAYLOAD);
  const stores = new PageStores(`${d}/pages`, 1024, "sub");
  const server = new RpcServer(
    loadIdentity(`${d}/sub`),
    heldAsData(pageHandlers(stores, `${d}/ckpt`, (p) => String(p))),
    { hostname: "127.0.0.31", port: 0 },
    () => {},
    AGENT_ACCESS,
  );
  server.start();
  const addr = `127.0.0.31:${server.addr.port}`;
  const link = new SubLink(1, addr, loadIdentity(`${d}/main`), "big", pages, () => {});
  try {
    const hold: Array<[number, number]> = [[0, 3], [2 ** 23 + 17, 2], [pages - 4, 4]];
    assertEquals(await link.connect(hold), 9);
    const bitmap = await link.held();
    assertEquals(bitmap.length, Math.ceil(pages / 8));
    const set: number[] = [];
    for (let g = 0; g < pages; g++) if (bitmap[g >> 3] & (1 << (g & 7))) set.push(g);
    assertEquals(set, hold.flatMap(([g, n]) => Array.from({ length: n }, (_, k) => g + k)));
    // The same bitmap in one reply, as the agent sent it before, does not fit a control frame.
    const plain = await RpcClient.connect(addr, loadIdentity(`${d}/main`));
    try {
      const e = await assertRejects(() => plain.call("pages.held", { vm: "big", pages }));
      assert((e as Error).message.includes("exceeds the 1048576-byte limit"), String(e));
    } finally {
      plain.close();
    }
  } finally {
    link.close();
    server.close();
    Deno.removeSync(d, { recursive: true });
  }
});
