/**
 * Issue 14 item 6: the bad page after a split migration in place. The switchover of a split
 * migration drops the departing pages from main's memory; the vCPU pause stops guest code, but not
 * every thread that touches guest memory (KVM's async page-fault worker, for one). A touch of a
 * departing page after its hole is punched and before userfaultfd covers it makes it a fresh zero
 * page on main, present, so it never faults and the sub-host's copy is never fetched.
 *
 * The test runs the real SplitMigration on real guest memory and a real userfaultfd, with a
 * sub-host that keeps in memory what it is sent, and forces that interleaving through the one seam
 * the switchover has: main's memory. Right after the switchover punches the departing pages, a
 * second thread writes a byte of one of them, and the switchover goes on only once that write has
 * landed or is parked in a userfaultfd fault.
 */
import { assert, assertEquals } from "./helpers/assert.ts";
import * as libc from "../src/ffi/libc.ts";
import { FEATURE, REGISTER_MODE, Userfaultfd } from "../src/ffi/uffd.ts";
import { GuestMemory } from "../src/memory/guest_memory.ts";
import { DirtyTracker } from "../src/memory/dirty_tracker.ts";
import type { FaultServer } from "../src/paging/fault_server.ts";
import { MainMemory } from "../src/paging/main_memory.ts";
import { MAIN, PageOwnership } from "../src/paging/ownership.ts";
import type { PagerContext } from "../src/paging/pager_context.ts";
import { SplitMigration } from "../src/paging/split_migration.ts";
import type { SubHosts } from "../src/paging/sub_hosts.ts";
import { PageOp } from "../src/paging/wire.ts";

const PAGE = 4096;
const PAGES = 8;
/** The byte the other thread writes, and the page it writes it to. */
const POKE = 0xee, VICTIM = 3;

/** Main's memory, with a thread that writes to a departing page right after the hole punch. */
class PokedAfterPunch extends MainMemory {
  /** How the write went: it landed on main's memory, or it is parked in a userfaultfd fault. */
  poke?: "landed" | "faulted";

  readonly #uffd: Userfaultfd;
  readonly #words: Int32Array;

  constructor(mem: GuestMemory, uffd: Userfaultfd, words: Int32Array) {
    super(mem, uffd);
    this.#uffd = uffd;
    this.#words = words;
  }

  override punch(gfns: number[]): void {
    super.punch(gfns);
    if (!gfns.includes(VICTIM)) return;
    Atomics.store(this.#words, 0, 1);
    Atomics.notify(this.#words, 0);
    // The switchover is synchronous: it must not go on before the write is done or parked.
    const deadline = performance.now() + 5000;
    while (performance.now() < deadline) {
      if (Atomics.load(this.#words, 1) === 1) {
        this.poke = "landed";
        return;
      }
      const [rev] = libc.poll([{ fd: this.#uffd.fd, events: libc.POLL.IN }], 1);
      if (rev & libc.POLL.IN) {
        this.poke = "faulted";
        return;
      }
    }
    throw new Error("the write neither landed nor faulted within 5 s");
  }
}

Deno.test("a departing page touched during the switchover of a split migration reads its sub-host's copy, not a fresh zero page", async () => {
  const mem = GuestMemory.create(PAGES * PAGE, "switchover");
  const uffd = Userfaultfd.open(FEATURE.WP_HUGETLBFS_SHMEM);
  const shared = new SharedArrayBuffer(24);
  const words = new Int32Array(shared, 0, 4);
  Atomics.store(words, 2, POKE);
  new BigInt64Array(shared, 16, 1)[0] = BigInt.asIntN(64, mem.hostAddr + BigInt(VICTIM * PAGE));
  const worker = new Worker(new URL("./helpers/window_worker.ts", import.meta.url).href, {
    type: "module",
  });
  const ready = Promise.withResolvers<void>(), done = Promise.withResolvers<void>();
  worker.onmessage = (e) => (e.data === "ready" ? ready : done).resolve();
  worker.postMessage(shared);
  await ready.promise;
  // A one-host VM whose pages all hold a stamp; the guest writes nothing during the migration.
  for (let g = 0; g < PAGES; g++) mem.view(g * PAGE, PAGE).fill(0x40 + g);
  const memory = new PokedAfterPunch(mem, uffd, words);
  const held = new Map<number, Uint8Array>();
  const link = {
    releases: { cancel() {}, queue() {} },
    request(op: PageOp, gfns: Uint32Array, opts: { data?: Uint8Array } = {}) {
      assertEquals(op, PageOp.PUT);
      gfns.forEach((g, k) => held.set(g, opts.data!.slice(k * PAGE, (k + 1) * PAGE)));
      return Promise.resolve(undefined);
    },
  };
  const ownership = new PageOwnership(PAGES, 2, () => MAIN);
  const ctx: PagerContext = {
    memory,
    ownership,
    links: { homeOf: () => 1, link: () => link } as unknown as SubHosts,
    zero: new Uint8Array(PAGES),
    vm: { pause: () => Promise.resolve(0), resume() {} },
    tracker: new DirtyTracker(PAGES, () => new Uint8Array(Math.ceil(PAGES / 64) * 8)),
    pinned: 0,
    stopped: () => false,
    withMemory: (fn) => Promise.resolve(fn()),
  };
  const migration = new SplitMigration(ctx, { counts: { faults: 0 } } as unknown as FaultServer);
  // What RemotePager's arm does first: guest memory under userfaultfd, as for paging.
  const arm = () => {
    uffd.register(mem.hostAddr, mem.size, REGISTER_MODE.MISSING | REGISTER_MODE.WP);
  };
  try {
    const all = Array.from({ length: PAGES }, (_, g) => g);
    const report = await migration.precopy(
      { out: all, zero: [], holder: () => MAIN },
      performance.now(),
      arm,
    );
    assertEquals(report.handedOver, PAGES, "every page was sent and left clean");
    assertEquals(ownership.holderOf(VICTIM), 1);
    if (memory.poke === "faulted") {
      // The fault loop's part: the page is the sub-host's, so its copy is fetched and installed.
      for (const m of uffd.readEvents()) {
        const g = Number((m.address - mem.hostAddr) / BigInt(PAGE));
        assertEquals(g, VICTIM);
        memory.copyIn([g], held.get(g)!);
      }
    }
    await done.promise;
    // Only now is the victim present on main (the other pages are not: reading them would fault).
    const page = mem.view(VICTIM * PAGE, PAGE);
    const want = held.get(VICTIM)!.slice();
    want[0] = POKE;
    const zeros = page.subarray(1).every((b) => b === 0);
    assert(
      !zeros,
      `page ${VICTIM} reads zeros where its sub-host holds 0x${(0x40 + VICTIM).toString(16)}: ` +
        `the write between the hole punch and the arm (${memory.poke}) made it a fresh zero page`,
    );
    assertEquals(page, want);
    assertEquals(memory.poke, "faulted", "the write waited for userfaultfd");
  } finally {
    // Unregistering wakes a write still parked in a fault, so the worker can end.
    uffd.teardown(mem.hostAddr, mem.size);
    await Promise.race([done.promise, new Promise((r) => setTimeout(r, 1000))]);
    worker.terminate();
    mem.close();
  }
});
