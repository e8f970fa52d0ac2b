import { assert, assertEquals, assertThrows } from "./helpers/assert.ts";
import * as libc from "../src/ffi/libc.ts";
import {
  EVENT,
  FEATURE,
  installRun,
  PAGEFAULT_FLAG,
  REGISTER_MODE,
  Userfaultfd,
} from "../src/ffi/uffd.ts";
import { Errno, SyscallError } from "../src/ffi/errors.ts";
import { GuestMemory } from "../src/memory/guest_memory.ts";
import { Vm } from "../src/vmm/vm.ts";
import { bootMemstamp } from "../src/vmm/guests/memstamp/boot.ts";
import { MemstampControl } from "../src/vmm/guests/memstamp/memstamp.ts";
import { LAYOUT } from "../src/vmm/guests/memstamp/layout.ts";

const MiB = 1 << 20;
const PAGE = 4096;

function memstampVm(memSize: number) {
  const vm = Vm.create({ name: "uffd", memSize, vcpus: 1 }, { devices: () => [] });
  bootMemstamp(vm, { memSize, vcpus: 1, pattern: "random", timerHz: 0 });
  return { vm, ctl: new MemstampControl(vm.memory) };
}

/** Serves userfaultfd events until `until` resolves; returns the events seen. */
async function serve(
  uffd: Userfaultfd,
  until: Promise<unknown>,
  handle: (address: bigint, flags: bigint) => void,
): Promise<number> {
  let stop = false;
  until.finally(() => (stop = true));
  let n = 0;
  while (!stop) {
    const [rev] = await libc.pollAsync([{ fd: uffd.fd, events: libc.POLL.IN }], 50);
    if (!(rev & libc.POLL.IN)) continue;
    for (const m of uffd.readEvents()) {
      assertEquals(m.event, EVENT.PAGEFAULT);
      handle(m.address & ~0xfffn, m.flags);
      n++;
    }
  }
  return n;
}

Deno.test("userfaultfd MISSING: a guest's first touches are served by COPY and ZEROPAGE and every page verifies", async () => {
  const memSize = 16 * MiB;
  const { vm, ctl } = memstampVm(memSize);
  const uffd = Userfaultfd.open(0n);
  try {
    const start = vm.memory.hostAddr + BigInt(LAYOUT.TABLE);
    const len = memSize - LAYOUT.TABLE;
    vm.memory.view(LAYOUT.TABLE, len).fill(0);
    libc.madvise(libc.ptrAdd(vm.memory.ptr, LAYOUT.TABLE), len, libc.MADV.REMOVE);
    uffd.register(start, len, REGISTER_MODE.MISSING);
    const zero = new Uint8Array(PAGE);
    const src = libc.ptrValue(Deno.UnsafePointer.of(zero));
    let copies = 0, zeros = 0;
    await vm.start();
    const stamped = ctl.waitStamped(60_000);
    const faults = await serve(uffd, stamped, (addr, flags) => {
      if (flags & PAGEFAULT_FLAG.WRITE || (addr / 4096n) % 2n === 0n) {
        copies += uffd.copy(addr, src, PAGE) > 0 ? 1 : 0;
      } else {
        zeros += uffd.zeropage(addr, PAGE) > 0 ? 1 : 0;
      }
    });
    await stamped;
    assert(faults >= len / PAGE / 2, `faults served: ${faults}`);
    assert(copies > 0, "COPY served faults");
    const v = await ctl.verify();
    assert(v.ok, JSON.stringify(v.bad, (_, x) => typeof x === "bigint" ? `${x}` : x));
    assert(zeros >= 0);
  } finally {
    await vm.stop();
    uffd.close();
  }
});

Deno.test("userfaultfd WP: a write to a write-protected page blocks until the handler unprotects it", async () => {
  const size = 16 * PAGE;
  const fd = libc.memfdCreate("wp");
  libc.ftruncate(fd, size);
  const p = libc.mmap(size, libc.MAP.PROT_READ | libc.MAP.PROT_WRITE, libc.MAP.SHARED, fd);
  const mem = libc.bytesAt(p, size);
  mem.fill(7);
  const uffd = Userfaultfd.open(FEATURE.WP_HUGETLBFS_SHMEM);
  const worker = new Worker(new URL("./helpers/touch_worker.ts", import.meta.url).href, {
    type: "module",
  });
  try {
    const start = libc.ptrValue(p);
    uffd.register(start, size, REGISTER_MODE.WP);
    uffd.writeProtect(start, size, true);
    const written = new Promise((r) => (worker.onmessage = r));
    worker.postMessage({ addr: start + 5n * 4096n + 9n, value: 42 });
    const [rev] = await libc.pollAsync([{ fd: uffd.fd, events: libc.POLL.IN }], 5000);
    assert(rev & libc.POLL.IN, "a write-protect fault event arrives");
    const [m] = uffd.readEvents();
    assertEquals(m.event, EVENT.PAGEFAULT);
    assert(m.flags & PAGEFAULT_FLAG.WP, "flagged as a write-protect fault");
    assertEquals(m.address & ~0xfffn, start + 5n * 4096n);
    assertEquals(mem[5 * 4096 + 9], 7, "the write has not happened yet");
    uffd.writeProtect(m.address & ~0xfffn, PAGE, false);
    await written;
    assertEquals(mem[5 * 4096 + 9], 42);
  } finally {
    worker.terminate();
    uffd.close();
    libc.munmap(p, size);
    libc.close(fd);
  }
});

Deno.test("userfaultfd WP: a guest's writes to protected pages fault, are unprotected, and every page still verifies", async () => {
  const memSize = 16 * MiB;
  const { vm, ctl } = memstampVm(memSize);
  const uffd = Userfaultfd.open(FEATURE.WP_HUGETLBFS_SHMEM);
  try {
    await vm.start();
    await ctl.waitStamped(60_000);
    await vm.pause();
    const start = vm.memory.hostAddr + BigInt(LAYOUT.TABLE);
    const len = memSize - LAYOUT.TABLE;
    uffd.register(start, len, REGISTER_MODE.WP);
    uffd.writeProtect(start, len, true);
    const w0 = ctl.status(0).written;
    vm.resume();
    let wp = 0;
    const enough = (async () => {
      while (wp < 200) await new Promise((r) => setTimeout(r, 5));
    })();
    await serve(uffd, enough, (addr, flags) => {
      assert(flags & PAGEFAULT_FLAG.WP, "a write-protect fault");
      wp++;
      uffd.writeProtect(addr, PAGE, false);
    });
    await vm.pause();
    assert(ctl.status(0).written - w0 < 400n, "the writer could not run ahead of the handler");
    uffd.writeProtect(start, len, false);
    uffd.unregister(start, len);
    vm.resume();
    const v = await ctl.verify();
    assert(v.ok, "every page verifies after write-protect faults");
  } finally {
    await vm.stop();
    uffd.close();
  }
});

Deno.test("installRun skips pages a racing install populated and throws on any other error, so no page is left absent unnoticed", () => {
  const mem = GuestMemory.create(8 * PAGE, "uffd-install");
  const uffd = Userfaultfd.open(0n);
  try {
    const base = mem.hostAddr;
    uffd.register(base, 4 * PAGE, REGISTER_MODE.MISSING);
    const page = new Uint8Array(PAGE).fill(0x5a);
    const src = libc.ptrValue(Deno.UnsafePointer.of(page));
    const copy = (dst: bigint, len: number) => uffd.copy(dst, src, len);
    assertEquals(uffd.copy(base + BigInt(PAGE), src, PAGE), PAGE);
    installRun(base, PAGE, [0, 1, 2, 3], copy);
    assert(mem.view(0, 4 * PAGE).every((b) => b === 0x5a), "every page of the run is in");
    installRun(base, PAGE, [0, 1], (dst, len) => uffd.zeropage(dst, len));
    assert(mem.view(0, 2 * PAGE).every((b) => b === 0x5a), "populated pages are left as they are");
    const e = assertThrows(() => installRun(base, PAGE, [3, 4], copy), SyscallError);
    assertEquals((e as SyscallError).errno, Errno.ENOENT, "page 4 is outside the registered range");
  } finally {
    uffd.close();
    mem.close();
  }
});
