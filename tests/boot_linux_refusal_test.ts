/**
 * Every refusal on the Linux boot path: a file that is not a usable bzImage, and a guest, initrd or
 * command line that does not fit, each named with what to do.
 */
import { assertEquals, assertThrows } from "./helpers/assert.ts";
import { readField, SETUP_HEADER } from "../src/vmm/boot/boot_params.ts";
import { BootImageError, parseBzImage } from "../src/vmm/boot/bzimage.ts";
import { loadLinux } from "../src/vmm/boot/linux.ts";
import { cString, fakeBzImage, MiB, zeroPage } from "./helpers/boot_image.ts";

// ---------------------------------------------------------------------------------------------
// refusals

Deno.test("a file without the HdrS magic is refused as not a bzImage, naming the file", () => {
  const e = assertThrows(
    () => parseBzImage(fakeBzImage({ magic: 0x12345678 }), "/tmp/vmlinux"),
    BootImageError,
    "/tmp/vmlinux: not a bzImage (no HdrS magic at 0x202)",
  );
  assertEquals((e as BootImageError).path, "/tmp/vmlinux");
  assertThrows(() => parseBzImage(new Uint8Array(100), "tiny"), BootImageError, "tiny: ");
});

Deno.test("boot protocol older than 2.12 is refused", () => {
  assertThrows(
    () => parseBzImage(fakeBzImage({ version: 0x020a }), "old"),
    BootImageError,
    "boot protocol 2.10 is older than the 2.12",
  );
});

Deno.test("a kernel without XLF_KERNEL_64 is refused", () => {
  assertThrows(
    () => parseBzImage(fakeBzImage({ xloadflags: 0 }), "k32"),
    BootImageError,
    "XLF_KERNEL_64",
  );
});

Deno.test("a truncated bzImage is refused", () => {
  assertThrows(
    () => parseBzImage(fakeBzImage({ truncate: 5 * 512 + 1000 }), "cut"),
    BootImageError,
    "cut: truncated",
  );
});

Deno.test("memSize below 64 MiB is refused", () => {
  const memSize = 32 * MiB;
  assertThrows(
    () =>
      loadLinux(new Uint8Array(memSize), {
        kernel: fakeBzImage(),
        kernelPath: "k",
        cmdline: "",
        memSize,
      }),
    BootImageError,
    "guest memory of 32 MiB is below the 64 MiB",
  );
});

Deno.test("a kernel whose init_size does not fit in memSize is refused with the size needed", () => {
  const memSize = 64 * MiB;
  const kernel = fakeBzImage({ initSize: 100 * MiB });
  assertThrows(
    () => loadLinux(new Uint8Array(memSize), { kernel, kernelPath: "big", cmdline: "", memSize }),
    BootImageError,
    "give the VM at least 102 MiB",
  );
});

Deno.test("an initrd that does not fit above the kernel is refused, naming the initrd", () => {
  const memSize = 64 * MiB;
  const opts = {
    kernel: fakeBzImage({ initSize: 40 * MiB }),
    kernelPath: "k",
    initrd: new Uint8Array(30 * MiB),
    initrdPath: "/tmp/huge.cpio.gz",
    cmdline: "",
    memSize,
  };
  assertThrows(
    () => loadLinux(new Uint8Array(memSize), opts),
    BootImageError,
    "/tmp/huge.cpio.gz: initrd of 30 MiB does not fit",
  );
});

Deno.test("a command line longer than cmdline_size is refused", () => {
  const memSize = 64 * MiB;
  const kernel = fakeBzImage({ cmdlineSize: 16 });
  const ram = new Uint8Array(memSize);
  const ok = loadLinux(ram, { kernel, kernelPath: "k", cmdline: "x".repeat(16), memSize });
  assertEquals(cString(ram, readField(zeroPage(ram, ok), SETUP_HEADER.cmd_line_ptr)).length, 16);
  assertThrows(
    () => loadLinux(ram, { kernel, kernelPath: "k", cmdline: "x".repeat(17), memSize }),
    BootImageError,
    "command line is 17 bytes but this kernel accepts at most 16",
  );
});
