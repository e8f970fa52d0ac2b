/**
 * The full Linux guest: boots Debian's cloud kernel with the busybox initramfs to a shell. Under PVM
 * (guest kernel code emulated ~1000x slower) it cannot get there in minutes, so these tests run only
 * where /sys/module/kvm_pvm is absent and say why they were skipped otherwise.
 */
import { skipIf } from "./helpers/accel.ts";
import { assert, assertEquals } from "./helpers/assert.ts";
import { dcres, tempStateDir } from "./helpers/cli.ts";
import { buildInitramfs, findGuestKernel } from "../src/vmm/boot/initramfs.ts";
import { probeAccelerator } from "../src/accel/select.ts";
import { Machine } from "../src/vmm/machine.ts";
import { ConsoleHub } from "../src/vmm/control/console_hub.ts";
import { ControlServer } from "../src/vmm/control/server.ts";

function skipReason(): string | undefined {
  const accel = probeAccelerator();
  if (typeof accel === "string") return accel;
  if (!accel.capabilities.linuxGuest) {
    return `the linux guest needs KVM; this host runs ${accel.kind}`;
  }
  if (!accel.capabilities.fastGuestKernel) {
    return `this host runs ${accel.capabilities.description}: a Linux kernel cannot boot to a shell in minutes here`;
  }
  if (!findGuestKernel()) return "no kernel in /boot (install linux-image-cloud-amd64)";
  return undefined;
}

const SKIP = skipReason();

async function initrdFile(): Promise<string> {
  const path = Deno.makeTempFileSync({ suffix: ".cpio.gz" });
  Deno.writeFileSync(path, await buildInitramfs());
  return path;
}

Deno.test({
  name: "linux: --exec runs a command in the guest shell and returns its output and status",
  ...skipIf(
    SKIP,
    "linux: --exec runs a command in the guest shell and returns its output and status",
  ),
}, async () => {
  const initrd = await initrdFile();
  const r = await dcres([
    "--state-dir",
    tempStateDir(),
    "run",
    "--guest",
    "linux",
    "--mem",
    "512M",
    "--initrd",
    initrd,
    "--exec",
    "echo $((6*7)); grep MemTotal /proc/meminfo",
  ], { timeoutMs: 300_000 });
  assertEquals(r.code, 0, r.stderr);
  const lines = r.stdout.trim().split("\n");
  assertEquals(lines[0].trim(), "42");
  const kb = Number(/MemTotal:\s+(\d+) kB/.exec(r.stdout)?.[1]);
  assert(kb > 400 * 1024 && kb <= 512 * 1024, `MemTotal ${kb} kB is close to 512 MiB`);
});

Deno.test({
  name:
    "linux: a guest captured and restored into a new VM keeps answering and its clock does not jump",
  ...skipIf(
    SKIP,
    "linux: a guest captured and restored into a new VM keeps answering and its clock does not jump",
  ),
}, async () => {
  const initrd = await initrdFile();
  const spec = {
    name: "lx",
    guest: "linux" as const,
    memSize: 512 << 20,
    vcpus: 2,
    linux: { kernel: findGuestKernel()!, initrd, cmdline: "console=ttyS0 panic=-1" },
  };
  const hub = new ConsoleHub();
  const m = await Machine.create(spec, { serialOut: (b) => hub.push(b) });
  await m.vm.start();
  const server = new ControlServer(m, hub, () => m.vm.stop());
  const t0 = Number((await server.exec("cut -d' ' -f1 /proc/uptime", 240_000)).output.trim());
  await m.vm.pause();
  const state = m.save();
  const memory = await m.vm.detachMemory();
  await new Promise((r) => setTimeout(r, 3000));
  const hub2 = new ConsoleHub();
  const r = Machine.restore({ memory, io: { serialOut: (b) => hub2.push(b) } }, state);
  hub2.push(new TextEncoder().encode("DCRES-GUEST-READY\n"));
  await r.vm.start();
  const s2 = new ControlServer(r, hub2, () => r.vm.stop());
  try {
    const t1 = Number((await s2.exec("cut -d' ' -f1 /proc/uptime", 60_000)).output.trim());
    assert(t1 >= t0, "uptime continues");
    assert(
      t1 - t0 < 2.5,
      `uptime advanced ${t1 - t0} s across a 3 s absence: the clock was carried over, not jumped`,
    );
  } finally {
    await r.vm.stop();
    memory.close();
  }
});

Deno.test({
  name:
    "linux: in each mode a checkpoint restores (eager and lazy) a guest whose tmpfs file and counter carry on",
  ...skipIf(
    SKIP,
    "linux: in each mode a checkpoint restores (eager and lazy) a guest whose tmpfs file and counter carry on",
  ),
}, async () => {
  const { DirtyTracker } = await import("../src/memory/dirty_tracker.ts");
  const { takeCheckpoint } = await import("../src/ckpt/save.ts");
  const { restoreCheckpoint } = await import("../src/ckpt/restore.ts");
  const initrd = await initrdFile();
  const spec = {
    name: "lxck",
    guest: "linux" as const,
    memSize: 512 << 20,
    vcpus: 1,
    linux: { kernel: findGuestKernel()!, initrd, cmdline: "console=ttyS0 panic=-1" },
  };
  let hub = new ConsoleHub();
  let m = await Machine.create(spec, { serialOut: (b) => hub.push(b) });
  await m.vm.start();
  let server = new ControlServer(m, hub, () => m.vm.stop());
  const sum =
    (await server.exec("head -c 16M /dev/urandom > /tmp/f; sha256sum /tmp/f | cut -c1-64", 240_000))
      .output.trim();
  await server.exec(
    "(i=0; while true; do i=$((i+1)); echo $i > /tmp/c; sleep 0.01; done) &",
    30_000,
  );
  for (const mode of ["stop", "precopy", "cow"] as const) {
    for (const lazy of [false, true]) {
      const dir = Deno.makeTempDirSync();
      const tracker = new DirtyTracker(m.vm.memory.pages, () => m.vm.dirtyBitmap());
      let counter = 0;
      await takeCheckpoint(m, tracker, {
        dir,
        mode,
        incremental: false,
        compress: false,
        maxDowntimeMs: 50,
      });
      counter = Number((await server.exec("cat /tmp/c", 30_000)).output.trim());
      await m.vm.stop();
      hub = new ConsoleHub();
      const r = restoreCheckpoint({ path: dir, lazy, io: { serialOut: (b) => hub.push(b) } });
      hub.push(new TextEncoder().encode("DCRES-GUEST-READY\n"));
      await r.machine.vm.start();
      const paging = r.pager?.run();
      m = r.machine;
      server = new ControlServer(m, hub, () => m.vm.stop());
      assertEquals(
        (await server.exec("sha256sum /tmp/f | cut -c1-64", 60_000)).output.trim(),
        sum,
        `${mode} ${lazy ? "lazy" : "eager"}: tmpfs file intact`,
      );
      const c1 = Number((await server.exec("cat /tmp/c", 30_000)).output.trim());
      await new Promise((res) => setTimeout(res, 500));
      const c2 = Number((await server.exec("cat /tmp/c", 30_000)).output.trim());
      assert(
        c1 > 0 && c2 > c1,
        `${mode}: the counter runs on (${counter} at checkpoint, then ${c1}, ${c2})`,
      );
      await paging;
      r.checkpoint.close();
      Deno.removeSync(dir, { recursive: true });
    }
  }
  await m.vm.stop();
});
