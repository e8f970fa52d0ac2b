/**
 * The initramfs dcres builds for a Linux guest: the newc archive writer, the busybox /init it
 * packs, and how the guest kernel is found.
 */
import { gunzipSync } from "node:zlib";
import { assert, assertEquals, sameBytes } from "./helpers/assert.ts";
import {
  buildInitramfs,
  type CpioEntry,
  findGuestKernel,
  GUEST_READY_LINE,
  INIT_SCRIPT,
  writeNewc,
} from "../src/vmm/boot/initramfs.ts";

/** Parses a gzipped or plain newc archive into name -> {mode, data, rdev}. */
function parseNewc(archive: Uint8Array) {
  const text = new TextDecoder();
  const files = new Map<string, { mode: number; data: Uint8Array; rdev: [number, number] }>();
  let off = 0;
  const align4 = (n: number) => (n + 3) & ~3;
  for (;;) {
    const hdr = text.decode(archive.subarray(off, off + 110));
    assertEquals(hdr.slice(0, 6), "070701", `newc magic at ${off}`);
    const f = (i: number) => parseInt(hdr.slice(6 + i * 8, 14 + i * 8), 16);
    const [mode, size, rmaj, rmin, namesize] = [f(1), f(6), f(9), f(10), f(11)];
    const name = text.decode(archive.subarray(off + 110, off + 110 + namesize - 1));
    assertEquals(archive[off + 110 + namesize - 1], 0, `${name} is NUL-terminated`);
    const dataAt = align4(off + 110 + namesize);
    if (name === "TRAILER!!!") return files;
    files.set(name, { mode, data: archive.subarray(dataAt, dataAt + size), rdev: [rmaj, rmin] });
    off = align4(dataAt + size);
    assert(off <= archive.length, "archive ends inside an entry");
  }
}

// ---------------------------------------------------------------------------------------------
// initramfs

Deno.test("newc archive round trip keeps names, modes, data, symlinks and device numbers", () => {
  const entries: CpioEntry[] = [
    { name: "bin", kind: "dir", perm: 0o755 },
    { name: "bin/x", kind: "file", perm: 0o755, data: new Uint8Array([1, 2, 3, 4, 5]) },
    { name: "bin/y", kind: "symlink", perm: 0o777, data: "/bin/x" },
    { name: "dev/console", kind: "chardev", perm: 0o600, rdev: { major: 5, minor: 1 } },
  ];
  const archive = writeNewc(entries);
  assertEquals(archive.length % 4, 0);
  const files = parseNewc(archive);
  assertEquals([...files.keys()], ["bin", "bin/x", "bin/y", "dev/console"]);
  assertEquals(files.get("bin")!.mode, 0o040755);
  assertEquals(files.get("bin/x")!.mode, 0o100755);
  assertEquals([...files.get("bin/x")!.data], [1, 2, 3, 4, 5]);
  assertEquals(files.get("bin/y")!.mode, 0o120777);
  assertEquals(new TextDecoder().decode(files.get("bin/y")!.data), "/bin/x");
  assertEquals(files.get("dev/console")!.mode, 0o020600);
  assertEquals(files.get("dev/console")!.rdev, [5, 1]);
});

Deno.test("the busybox initramfs holds /init, /bin/busybox and the applets /init needs", async () => {
  const busybox = "/bin/busybox";
  try {
    Deno.statSync(busybox);
  } catch {
    console.log("skipped: /bin/busybox is missing (apt-get install busybox-static)");
    return;
  }
  const files = parseNewc(gunzipSync(await buildInitramfs({ busybox })));
  const init = files.get("init");
  assert(init, "init present");
  assertEquals(init.mode, 0o100755);
  const script = new TextDecoder().decode(init.data);
  assertEquals(script, INIT_SCRIPT);
  assert(script.startsWith("#!/bin/sh\n"));
  assert(script.split("\n").includes(`echo ${GUEST_READY_LINE}`), "prints the ready line");
  const bb = files.get("bin/busybox");
  assert(bb, "bin/busybox present");
  assertEquals(bb.mode, 0o100755);
  assert(sameBytes(bb.data, await Deno.readFile(busybox)), "bin/busybox is the host's busybox");
  for (const name of ["bin/sh", "bin/mount", "sbin/poweroff", "bin/cat", "bin/echo", "bin/grep"]) {
    const link = files.get(name);
    assert(link, `${name} present`);
    assertEquals(link.mode, 0o120777, `${name} is a symlink`);
    assertEquals(new TextDecoder().decode(link.data), "/bin/busybox");
  }
  assertEquals(files.get("dev/console")?.rdev, [5, 1]);
  assertEquals(files.get("dev/ttyS0")?.rdev, [4, 64]);
  for (const dir of ["proc", "sys", "dev", "tmp"]) {
    assertEquals(files.get(dir)!.mode & 0o170000, 0o040000);
  }
  // Every entry's parent directory comes earlier, as the kernel's unpacker needs.
  const seen = new Set<string>();
  for (const name of files.keys()) {
    const parent = name.slice(0, Math.max(0, name.lastIndexOf("/")));
    assert(!parent || seen.has(parent), `${name} after its parent`);
    seen.add(name);
  }
  // The shell that will run /init accepts it.
  const dir = await Deno.makeTempDir();
  try {
    await Deno.writeTextFile(`${dir}/init`, script);
    const check = await new Deno.Command(busybox, { args: ["sh", "-n", `${dir}/init`] }).output();
    assert(check.success, new TextDecoder().decode(check.stderr));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("findGuestKernel prefers the newest cloud kernel, then any vmlinuz", async () => {
  const dir = await Deno.makeTempDir();
  try {
    assertEquals(findGuestKernel(dir), undefined);
    await Deno.writeFile(`${dir}/vmlinuz-6.1.0-9-amd64`, new Uint8Array());
    assertEquals(findGuestKernel(dir), `${dir}/vmlinuz-6.1.0-9-amd64`);
    for (const n of ["6.1.0-9", "6.1.0-10", "5.10.0-30"]) {
      await Deno.writeFile(`${dir}/vmlinuz-${n}-cloud-amd64`, new Uint8Array());
    }
    await Deno.writeFile(`${dir}/vmlinuz-6.9.0-1-amd64`, new Uint8Array());
    assertEquals(findGuestKernel(dir), `${dir}/vmlinuz-6.1.0-10-cloud-amd64`);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
  assertEquals(findGuestKernel("/nonexistent-boot-dir"), undefined);
});
