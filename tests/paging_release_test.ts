/**
 * Releases a sub-host is owed (issue 14 item 6): `vm check` waits for every release to be
 * acknowledged, also one whose link failed, and a release held back for a PUT that fails is owed
 * again. The first runs a real RemotePager on real guest memory and userfaultfd, against a sub-host
 * agent's page handlers and store over real QUIC in this process.
 */
import { assert, assertEquals, assertRejects } from "./helpers/assert.ts";
import { initCa, issueHost } from "../src/cli/ca_admin.ts";
import { loadIdentity } from "../src/net/identity.ts";
import { RpcServer } from "../src/net/quic.ts";
import { AGENT_ACCESS } from "../src/agent/access.ts";
import { pageHandlers } from "../src/agent/pages.ts";
import { PageStores } from "../src/paging/page_store.ts";
import { GuestMemory } from "../src/memory/guest_memory.ts";
import { DirtyTracker } from "../src/memory/dirty_tracker.ts";
import { RemotePager } from "../src/paging/remote_pager.ts";
import { ReleaseQueue } from "../src/paging/release_queue.ts";
import { MAX_BATCH } from "../src/paging/wire.ts";

const PAGE = 4096;

Deno.test("vm check waits for a release whose link failed: it brings the link back, the release is sent again, and every page has one holder", async () => {
  const d = Deno.makeTempDirSync({ prefix: "dcres-release-" });
  await initCa(`${d}/ca`);
  for (const [host, ip] of [["sub", "127.0.0.33"], ["main", "127.0.0.34"]]) {
    await issueHost({ caDir: `${d}/ca`, host, ips: [ip], role: "agent", outDir: `${d}/${host}` });
  }
  const stores = new PageStores(`${d}/pages`, 4 * MAX_BATCH, "sub");
  const server = new RpcServer(
    loadIdentity(`${d}/sub`),
    pageHandlers(stores, `${d}/ckpt`, (p) => String(p)),
    { hostname: "127.0.0.33", port: 0 },
    () => {},
    AGENT_ACCESS,
  );
  server.start();
  const pages = 2 * MAX_BATCH;
  const mem = GuestMemory.create(pages * PAGE, "release");
  const worker = new Worker(new URL("./helpers/touch_worker.ts", import.meta.url).href, {
    type: "module",
  });
  let pager: RemotePager | undefined;
  try {
    // Every page starts on the sub-host as a zero page; main keeps all it takes (no page-outs).
    pager = await RemotePager.start({
      name: "rel",
      mem,
      vm: { pause: () => Promise.resolve(0), resume() {} },
      tracker: new DirtyTracker(pages, () => new Uint8Array(Math.ceil(pages / 64) * 8)),
      split: { mainMemBytes: mem.size, subs: [`127.0.0.33:${server.addr.port}`] },
      identity: loadIdentity(`${d}/main`),
      pinnedPages: 0,
    });
    const [link] = pager.subLinks();
    // The QUIC connection is lost; nothing asks that sub-host for a page afterwards.
    link.fail("test: the connection was lost");
    // The guest writes a page the sub-host holds as a zero page: main takes it over without a
    // round trip and owes the sub-host its release, which fails with the link.
    const written = new Promise((r) => (worker.onmessage = r));
    worker.postMessage({ addr: mem.hostAddr + 5n * BigInt(PAGE) + 9n, value: 42 });
    await written;
    for (let i = 0; i < 100 && link.releases.unacknowledged === 0; i++) {
      await new Promise((r) => setTimeout(r, 10));
    }
    await new Promise((r) => setTimeout(r, 50));
    assertEquals(link.releases.unacknowledged, 1, "the release is owed");
    assert(link.down, "the link is still down");
    const report = await pager.check();
    assert(report.ok, report.problems.join("; "));
    assertEquals(report.holders.main, 1);
    assertEquals(link.releases.unacknowledged, 0);
    assertEquals(mem.view(5 * PAGE + 9, 1)[0], 42);
  } finally {
    await pager?.stop(true);
    worker.terminate();
    server.close();
    mem.close();
    Deno.removeSync(d, { recursive: true });
  }
});

Deno.test("a release held back for a PUT that fails is owed again, and one for a PUT that lands is not", async () => {
  const sent: number[][] = [];
  const q = new ReleaseQueue((gfns) => {
    sent.push(gfns);
    return Promise.resolve();
  }, () => {});
  try {
    q.queue([7, 8]);
    // A page-out of 7 and 8 to the same sub-host: their releases must not follow the PUT.
    await assertRejects(() =>
      q.replacing([7, 8], () => Promise.reject(new Error("test: the link failed")))
    );
    // The PUT failed: the sub-host may still hold its old copies, main holds the pages again.
    assertEquals(q.unacknowledged, 2);
    await q.replacing([8], () => Promise.resolve());
    assertEquals(q.unacknowledged, 1);
    q.flush();
    await Promise.resolve();
    assertEquals(sent, [[7]]);
    assertEquals(q.unacknowledged, 0);
  } finally {
    q.stop();
  }
});
