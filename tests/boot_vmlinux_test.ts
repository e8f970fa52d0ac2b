/**
 * Booting the kernel proper without its decompressor: gzip/zstd/lz4 payload extraction from a
 * bzImage, the installed Debian kernel's payload, what loadLinux chooses and writes on the ELF path,
 * and every refusal with the file and offset it names. LZ4 and ELF decoding:
 * boot_vmlinux_decode_test.ts.
 */
import { gzipSync, zstdCompressSync } from "node:zlib";
import { assert, assertEquals, assertThrows } from "./helpers/assert.ts";
import {
  LOADFLAGS,
  readField,
  SETUP_HEADER,
  writeField,
  writeField64,
  XLOADFLAGS,
} from "../src/vmm/boot/boot_params.ts";
import { BootImageError, parseBzImage } from "../src/vmm/boot/bzimage.ts";
import { loadSegments, loadSpan, parseElf64, physicalEntry } from "../src/vmm/boot/elf.ts";
import { loadLinux, withNokaslr } from "../src/vmm/boot/linux.ts";
import { extractVmlinux, payloadFormat } from "../src/vmm/boot/vmlinux.ts";
import { findGuestKernel } from "../src/vmm/boot/initramfs.ts";
import { cString, MiB } from "./helpers/boot_image.ts";
import {
  buildElf,
  DATA,
  fakeVmlinux,
  kernelLz4,
  KMAP,
  randomBytes,
  TEXT,
} from "./helpers/vmlinux_image.ts";

const enc = new TextEncoder();
const realKernel = findGuestKernel();

// ---------------------------------------------------------------------------------------------
// helpers

/** `compressed` followed by the build's size word, `size` as a little-endian u32. */
function sizeAppended(compressed: Uint8Array, size: number): Uint8Array {
  const out = new Uint8Array(compressed.length + 4);
  out.set(compressed);
  new DataView(out.buffer).setUint32(compressed.length, size, true);
  return out;
}

/** A bzImage whose protected-mode part holds `payload` at payload_offset 0x100. */
function bzImageWith(payload: Uint8Array, o: { offset?: number; length?: number } = {}) {
  const setupSize = 5 * 512;
  const pmSize = Math.ceil((0x100 + payload.length) / 16) * 16;
  const img = new Uint8Array(setupSize + pmSize);
  const dv = new DataView(img.buffer);
  const H = SETUP_HEADER;
  writeField(dv, H.setup_sects, 4);
  writeField(dv, H.syssize, pmSize / 16);
  writeField(dv, H.boot_flag, 0xaa55);
  img[H.jump.offset] = 0xeb;
  img[H.jump.offset + 1] = 0x26c - 0x202;
  writeField(dv, H.header, 0x53726448);
  writeField(dv, H.version, 0x020f);
  writeField(dv, H.loadflags, LOADFLAGS.LOADED_HIGH);
  writeField(dv, H.code32_start, 0x100000);
  writeField(dv, H.initrd_addr_max, 0x7fffffff);
  writeField(dv, H.kernel_alignment, 2 * MiB);
  writeField(dv, H.relocatable_kernel, 1);
  writeField(dv, H.xloadflags, XLOADFLAGS.XLF_KERNEL_64);
  writeField(dv, H.cmdline_size, 2047);
  writeField64(dv, H.pref_address, 16n * BigInt(MiB));
  writeField(dv, H.init_size, 8 * MiB);
  writeField(dv, H.payload_offset, o.offset ?? 0x100);
  writeField(dv, H.payload_length, o.length ?? payload.length);
  img.set(payload, setupSize + 0x100);
  return img;
}

function find(hay: Uint8Array, needle: Uint8Array): number {
  outer: for (let i = hay.indexOf(needle[0]); i >= 0; i = hay.indexOf(needle[0], i + 1)) {
    for (let j = 1; j < needle.length; j++) if (hay[i + j] !== needle[j]) continue outer;
    return i;
  }
  return -1;
}

// ---------------------------------------------------------------------------------------------
// payload extraction and loadLinux

Deno.test("payload: lz4, gzip and zstd payloads extract to the ELF; xz and others do not", () => {
  const elf = fakeVmlinux();
  const payloads: Array<[string, Uint8Array]> = [
    ["lz4", kernelLz4(elf)],
    ["gzip", gzipSync(elf)],
    ["zstd", sizeAppended(new Uint8Array(zstdCompressSync(elf)), elf.length)],
  ];
  for (const [format, payload] of payloads) {
    const img = bzImageWith(payload);
    const x = extractVmlinux(img, parseBzImage(img, format), format);
    assert(x.ok, `${format} extracts`);
    assertEquals(x.format, format);
    assertEquals(x.elf, elf);
  }
  const xz = new Uint8Array([0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00, 1, 2, 3, 4]);
  const img = bzImageWith(xz);
  const x = extractVmlinux(img, parseBzImage(img, "xz"), "xz");
  assertEquals(x, {
    ok: false,
    format: "xz",
    reason: "xz payload; this VMM decodes only lz4, gzip, zstd",
  });
  assertEquals(payloadFormat(new Uint8Array([0x5d, 0, 0, 0x80])), "lzma");
  assertEquals(payloadFormat(enc.encode("BZh91AY")), "bzip2");
  assertEquals(payloadFormat(new Uint8Array([0x89, 0x4c, 0x5a, 0x4f])), "lzo");
  assertEquals(payloadFormat(new Uint8Array([1, 2, 3, 4])), "unknown");
});

Deno.test("payload: damaged payloads are refused naming the kernel file and the file offset", () => {
  const elf = fakeVmlinux();
  const lz4 = kernelLz4(elf);
  lz4[8] = 0x14; // first token: 1 literal then a match...
  lz4[10] = 0x09; // ...at offset 9 with only 1 byte of output behind it.
  let img = bzImageWith(lz4);
  const fileOffset = 5 * 512 + 0x100 + 10;
  assertThrows(
    () => extractVmlinux(img, parseBzImage(img, "/boot/k"), "/boot/k"),
    BootImageError,
    `/boot/k: lz4 payload does not decode at file offset 0x${fileOffset.toString(16)}: ` +
      "match offset",
  );
  const gz = gzipSync(elf);
  gz[gz.length - 9] ^= 0xff; // the CRC
  img = bzImageWith(gz);
  assertThrows(
    () => extractVmlinux(img, parseBzImage(img, "/boot/k"), "/boot/k"),
    BootImageError,
    "/boot/k: gzip payload does not decode (payload at file offset 0xb00)",
  );
  const zs = sizeAppended(new Uint8Array(zstdCompressSync(elf)), elf.length);
  zs[zs.length - 1] ^= 1;
  img = bzImageWith(zs);
  assertThrows(
    () => extractVmlinux(img, parseBzImage(img, "/boot/k"), "/boot/k"),
    BootImageError,
    "zstd payload's size word says",
  );
  img = bzImageWith(gzipSync(enc.encode("not an elf")));
  assertThrows(
    () => extractVmlinux(img, parseBzImage(img, "/boot/k"), "/boot/k"),
    BootImageError,
    "does not decompress to an ELF file",
  );
  img = bzImageWith(gzipSync(elf), { length: 10 * MiB });
  assertThrows(
    () => extractVmlinux(img, parseBzImage(img, "/boot/k"), "/boot/k"),
    BootImageError,
    "lies outside the",
  );
});

Deno.test("loadLinux boots the extracted ELF: segments at p_paddr, entry, nokaslr, initrd above", () => {
  const elf = fakeVmlinux();
  const initrd = randomBytes(3 * MiB, 9);
  for (const [payload, format] of [[kernelLz4(elf), "lz4"], [gzipSync(elf), "gzip"]] as const) {
    const ram = new Uint8Array(64 * MiB).fill(0xee);
    const setup = loadLinux(ram, {
      kernel: bzImageWith(payload),
      kernelPath: "k",
      initrd,
      cmdline: "console=ttyS0",
      memSize: 64 * MiB,
    });
    assertEquals(setup.entry, "vmlinux-elf");
    assertEquals(setup.payloadFormat, format);
    assertEquals(setup.fallbackReason, undefined);
    assertEquals(setup.rip, 0x1000000n);
    assertEquals(setup.kernelAddr, 0x1000000n);
    assertEquals(setup.kernelEnd, BigInt(0x1200000 + DATA.length + 5 * 4096));
    assertEquals(ram.subarray(0x1000000, 0x1000000 + TEXT.length), TEXT);
    assertEquals(ram.subarray(0x1200000, 0x1200000 + DATA.length), DATA);
    assert(ram.subarray(0x1200000 + DATA.length, Number(setup.kernelEnd)).every((b) => !b));
    assertEquals(setup.cmdline, "console=ttyS0 nokaslr");
    const zp = new DataView(ram.buffer, Number(setup.rsi), 4096);
    assertEquals(cString(ram, readField(zp, SETUP_HEADER.cmd_line_ptr)), "console=ttyS0 nokaslr");
    assertEquals(readField(zp, SETUP_HEADER.loadflags) & LOADFLAGS.KASLR_FLAG, 0);
    const rd = readField(zp, SETUP_HEADER.ramdisk_image);
    assertEquals(readField(zp, SETUP_HEADER.ramdisk_size), initrd.length);
    assert(rd >= Number(setup.kernelEnd) && rd + initrd.length <= 64 * MiB, "initrd placement");
    assertEquals(ram.subarray(rd, rd + 4096), initrd.subarray(0, 4096));
  }
});

Deno.test("loadLinux chooses the bzImage path for xz, a missing payload, or when asked", () => {
  const xz = bzImageWith(new Uint8Array([0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00, 9, 9, 9, 9]));
  const base = { kernelPath: "k", cmdline: "console=ttyS0", memSize: 64 * MiB };
  let setup = loadLinux(new Uint8Array(64 * MiB), { ...base, kernel: xz });
  assertEquals([setup.entry, setup.payloadFormat], ["bzimage", "xz"]);
  assert(setup.fallbackReason?.includes("xz payload"));
  assertEquals(setup.rip, setup.kernelAddr + 0x200n);
  assertEquals(setup.cmdline, "console=ttyS0", "no nokaslr when the decompressor runs");
  const none = bzImageWith(new Uint8Array(16), { length: 0 });
  setup = loadLinux(new Uint8Array(64 * MiB), { ...base, kernel: none });
  assertEquals([setup.entry, setup.fallbackReason], [
    "bzimage",
    "the setup header declares no payload",
  ]);
  const gz = bzImageWith(gzipSync(fakeVmlinux()));
  setup = loadLinux(new Uint8Array(64 * MiB), { ...base, kernel: gz, prefer: "bzimage" });
  assertEquals([setup.entry, setup.fallbackReason], ["bzimage", "bzimage requested"]);
  assertEquals(setup.payloadFormat, "gzip", "the format is still reported");
});

Deno.test("withNokaslr adds nokaslr once", () => {
  assertEquals(withNokaslr("console=ttyS0"), "console=ttyS0 nokaslr");
  assertEquals(withNokaslr("nokaslr console=ttyS0"), "nokaslr console=ttyS0");
  assertEquals(withNokaslr("a  nokaslr\tb"), "a  nokaslr\tb");
  assertEquals(withNokaslr("nokaslrx"), "nokaslrx nokaslr");
  assertEquals(withNokaslr(""), "nokaslr");
});

Deno.test("loadLinux refuses an ELF in the first MiB, or one that leaves no room for the initrd", () => {
  const low = buildElf(0x80000n, [
    { vaddr: 0x80000n, paddr: 0x80000n, data: TEXT, memsz: TEXT.length },
  ]);
  const base = { kernelPath: "/k", cmdline: "", memSize: 64 * MiB };
  assertThrows(
    () => loadLinux(new Uint8Array(64 * MiB), { ...base, kernel: bzImageWith(gzipSync(low)) }),
    BootImageError,
    "/k: vmlinux segment at 0x80000 overlaps the first MiB",
  );
  assertThrows(
    () =>
      loadLinux(new Uint8Array(64 * MiB), {
        ...base,
        kernel: bzImageWith(gzipSync(fakeVmlinux())),
        initrd: new Uint8Array(46 * MiB),
        initrdPath: "/rd",
      }),
    BootImageError,
    "/rd: initrd of 46 MiB does not fit between the kernel's end at 18",
  );
  const long = "x".repeat(2045);
  assertThrows(
    () =>
      loadLinux(new Uint8Array(64 * MiB), {
        ...base,
        kernel: bzImageWith(gzipSync(fakeVmlinux())),
        cmdline: long,
      }),
    BootImageError,
    "command line is 2053 bytes",
  );
});

// ---------------------------------------------------------------------------------------------
// the installed kernel

Deno.test("the installed Debian kernel's payload extracts to its vmlinux ELF and loads at 16 MiB", () => {
  if (!realKernel) {
    console.log("skipped: no /boot/vmlinuz-* on this machine (install linux-image-cloud-amd64)");
    return;
  }
  const kernel = Deno.readFileSync(realKernel);
  const hdr = parseBzImage(kernel, realKernel);
  const t0 = performance.now();
  const x = extractVmlinux(kernel, hdr, realKernel);
  const ms = performance.now() - t0;
  if (!x.ok) {
    console.log(`skipped ELF checks: ${realKernel} has a ${x.format} payload (${x.reason})`);
    return;
  }
  console.log(
    `  ${x.format} payload -> ${(x.elf.length / MiB).toFixed(1)} MiB in ${ms.toFixed(0)} ms`,
  );
  const elf = parseElf64(x.elf, realKernel);
  const span = loadSpan(elf, realKernel);
  assertEquals(BigInt(span.start), hdr.prefAddress, "linked at CONFIG_PHYSICAL_START");
  assertEquals(physicalEntry(elf, realKernel), hdr.prefAddress, "startup_64 at _text");
  assert(span.end <= span.start + hdr.initSize, "segments within init_size");
  for (const s of loadSegments(elf)) {
    // Every segment but the per-CPU one (linked at 0) is mapped at __START_KERNEL_map + paddr.
    if (s.vaddr !== 0n) assertEquals(s.vaddr - s.paddr, KMAP, `segment at 0x${s.at.toString(16)}`);
  }
  const release = realKernel.replace(/.*\/vmlinuz-/, "");
  assert(find(x.elf, enc.encode(`Linux version ${release} `)) > 0, "the banner is in the image");

  const ram = new Uint8Array(256 * MiB);
  const initrd = new Uint8Array(8 * MiB).fill(0x5a);
  const setup = loadLinux(ram, {
    kernel,
    kernelPath: realKernel,
    initrd,
    cmdline: "console=ttyS0",
    memSize: 256 * MiB,
  });
  assertEquals([setup.entry, setup.payloadFormat, setup.rip], [
    "vmlinux-elf",
    x.format,
    0x1000000n,
  ]);
  const text = loadSegments(elf)[0];
  const at = Number(text.paddr);
  assertEquals(ram.subarray(at, at + 4096), x.elf.subarray(text.offset, text.offset + 4096));
  const zp = new DataView(ram.buffer, Number(setup.rsi), 4096);
  assert(readField(zp, SETUP_HEADER.ramdisk_image) >= Number(setup.kernelEnd), "initrd above");
});
