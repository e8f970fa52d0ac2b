/**
 * Boots the installed Debian kernel on /dev/kvm until its first console output. Under PVM (guest
 * ring-0 code emulated ~1000x slower) the kernel's own decompressor would take minutes, so this is
 * also the end-to-end check that the VMM loads the extracted vmlinux and enters it correctly.
 */
import { skipIf } from "./helpers/accel.ts";
import { assert } from "./helpers/assert.ts";
import { findGuestKernel } from "../src/vmm/boot/initramfs.ts";
import { Machine } from "../src/vmm/machine.ts";
import { openKvmAccelerator } from "../src/accel/kvm/kvm_accel.ts";

const LIMIT_MS = 90_000;

function skipReason(): string | undefined {
  if (!findGuestKernel()) return "no kernel in /boot (install linux-image-cloud-amd64)";
  try {
    Deno.openSync("/dev/kvm", { read: true, write: true }).close();
  } catch (e) {
    return `/dev/kvm cannot be opened: ${(e as Error).message}`;
  }
  return undefined;
}

const NAME = "linux on KVM: the kernel prints its banner and command line within 90 s";
Deno.test({ name: NAME, ...skipIf(skipReason(), NAME) }, async () => {
  const kernel = findGuestKernel()!;
  const release = kernel.replace(/.*\/vmlinuz-/, "");
  const decoder = new TextDecoder();
  let console_ = "";
  // Resolves once the "Command line:" line is complete: the banner precedes it in the same replay.
  const seen = Promise.withResolvers<void>();
  const m = await Machine.create({
    name: "kvm-boot",
    guest: "linux",
    memSize: 512 << 20,
    vcpus: 1,
    linux: { kernel, cmdline: "console=ttyS0 earlyprintk=serial,ttyS0,115200 panic=-1" },
  }, {
    serialOut: (b) => {
      console_ += decoder.decode(b, { stream: true });
      if (/Command line: [^\n]*\n/.test(console_)) seen.resolve();
    },
  }, openKvmAccelerator());
  const t0 = performance.now();
  let timer: ReturnType<typeof setTimeout> | undefined;
  try {
    await m.vm.start();
    const outcome = await Promise.race([
      seen.promise.then(() => "output"),
      m.vm.exited.then((e) => `the VM stopped: ${e.reason}: ${e.detail}`),
      new Promise<string>((r) => (timer = setTimeout(() => r("timeout"), LIMIT_MS))),
    ]);
    const secs = ((performance.now() - t0) / 1000).toFixed(1);
    if (outcome !== "output") {
      const regs = m.vm.isStopped ? undefined : (await m.vm.pause(), m.vm.vcpus[0].save().regs);
      const rip = regs ? ` (rip 0x${regs.rip.toString(16)})` : "";
      throw new Error(`no banner after ${secs} s: ${outcome}${rip}; console: ${console_}`);
    }
    console.log(`  first console lines after ${secs} s`);
    assert(console_.includes(`Linux version ${release} `), `banner names ${release}: ${console_}`);
    const cmdline = /Command line: ([^\n]*)\n/.exec(console_)![1];
    assert(cmdline.trim().split(" ").includes("nokaslr"), `the ELF path adds nokaslr: ${cmdline}`);
  } finally {
    clearTimeout(timer);
    await m.vm.stop();
  }
});
