/**
 * The Linux boot path without running a kernel: boot_params layout against the kernel headers,
 * the setup header of the installed Debian kernel, what loadLinux writes into guest memory, the
 * entry registers, every refusal, and the initramfs archive.
 */
import { gunzipSync } from "node:zlib";
import { assert, assertEquals, assertThrows } from "./helpers/assert.ts";
import { kvmSregs } from "../src/ffi/kvm_abi.ts";
import {
  BOOT_PARAMS,
  BOOT_PARAMS_SIZE,
  E820_TABLE,
  E820_TYPE,
  type Field,
  LOADFLAGS,
  readField,
  readField64,
  SETUP_HEADER,
  SETUP_HEADER_OFFSET,
  writeField,
  writeField64,
  XLOADFLAGS,
} from "../src/vmm/boot/boot_params.ts";
import {
  BootImageError,
  parseBzImage,
  protectedModeKernel,
  protocolText,
} from "../src/vmm/boot/bzimage.ts";
import {
  gdtDescriptor,
  type LinuxBootSetup,
  linuxE820,
  linuxRegs,
  linuxSregs,
  loadLinux,
} from "../src/vmm/boot/linux.ts";
import {
  buildInitramfs,
  type CpioEntry,
  findGuestKernel,
  GUEST_READY_LINE,
  INIT_SCRIPT,
  writeNewc,
} from "../src/vmm/boot/initramfs.ts";

const MiB = 1024 * 1024;
const GiB = 1024 * MiB;
const EBDA = 0x9fc00;
const HIGH = 0x100000;

// ---------------------------------------------------------------------------------------------
// helpers

/** A minimal bzImage: a valid setup header and a patterned protected-mode payload. */
function fakeBzImage(o: {
  version?: number;
  xloadflags?: number;
  initSize?: number;
  payload?: number;
  magic?: number;
  cmdlineSize?: number;
  truncate?: number;
} = {}): Uint8Array {
  const setupSects = 4;
  const setupSize = (setupSects + 1) * 512;
  const payload = o.payload ?? 256 * 1024;
  const img = new Uint8Array(setupSize + payload);
  const dv = new DataView(img.buffer);
  const H = SETUP_HEADER;
  writeField(dv, H.setup_sects, setupSects);
  writeField(dv, H.syssize, payload / 16);
  writeField(dv, H.boot_flag, 0xaa55);
  img[H.jump.offset] = 0xeb;
  img[H.jump.offset + 1] = 0x26c - 0x202;
  writeField(dv, H.header, o.magic ?? 0x53726448);
  writeField(dv, H.version, o.version ?? 0x020f);
  writeField(dv, H.loadflags, LOADFLAGS.LOADED_HIGH);
  writeField(dv, H.code32_start, HIGH);
  writeField(dv, H.initrd_addr_max, 0x7fffffff);
  writeField(dv, H.kernel_alignment, 2 * MiB);
  writeField(dv, H.relocatable_kernel, 1);
  writeField(dv, H.xloadflags, o.xloadflags ?? XLOADFLAGS.XLF_KERNEL_64);
  writeField(dv, H.cmdline_size, o.cmdlineSize ?? 2047);
  writeField64(dv, H.pref_address, 16n * BigInt(MiB));
  writeField(dv, H.init_size, o.initSize ?? 8 * MiB);
  const version = new TextEncoder().encode("6.99.0-fake (test) #1\0");
  img.set(version, 0x400);
  writeField(dv, H.kernel_version, 0x400 - 0x200);
  for (let i = setupSize; i < img.length; i++) img[i] = (i * 7 + 3) & 0xff;
  return o.truncate ? img.subarray(0, o.truncate) : img;
}

function zeroPage(ram: Uint8Array, setup: LinuxBootSetup): DataView {
  return new DataView(ram.buffer, ram.byteOffset + Number(setup.rsi), BOOT_PARAMS_SIZE);
}

function cString(ram: Uint8Array, at: number): string {
  const end = ram.indexOf(0, at);
  return new TextDecoder().decode(ram.subarray(at, end));
}

function readE820(dv: DataView) {
  const n = readField(dv, BOOT_PARAMS.e820_entries);
  return Array.from({ length: n }, (_, i) => {
    const off = E820_TABLE.offset + i * E820_TABLE.entrySize;
    return {
      addr: dv.getBigUint64(off + E820_TABLE.addr, true),
      size: dv.getBigUint64(off + E820_TABLE.size, true),
      type: dv.getUint32(off + E820_TABLE.type, true),
    };
  });
}

/** Walks 4-level page tables like the MMU; returns the physical address or undefined. */
function translate(ram: Uint8Array, cr3: bigint, va: bigint): bigint | undefined {
  const dv = new DataView(ram.buffer, ram.byteOffset);
  const present = 1n, large = 1n << 7n, addrMask = 0x000ffffffffff000n;
  let table = cr3 & addrMask;
  for (const [shift, size] of [[39n, 0n], [30n, 1n << 30n], [21n, 1n << 21n], [12n, 1n << 12n]]) {
    const entry = dv.getBigUint64(Number(table + ((va >> shift) & 0x1ffn) * 8n), true);
    if (!(entry & present) || !(entry & 2n)) return undefined;
    if (shift === 12n || (size && entry & large)) {
      const pageSize = shift === 12n ? 1n << 12n : size;
      return (entry & addrMask & ~(pageSize - 1n)) | (va & (pageSize - 1n));
    }
    table = entry & addrMask;
  }
  return undefined;
}

function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && a.every((x, i) => x === b[i]);
}

function readTextSync(path: string): string | undefined {
  try {
    return Deno.readTextFileSync(path);
  } catch {
    return undefined;
  }
}

const realKernel = findGuestKernel();

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
// boot_params layout

Deno.test("every boot_params and setup_header offset and width matches asm/bootparam.h", async () => {
  const gcc = await new Deno.Command("sh", { args: ["-c", "command -v gcc"] }).output();
  if (!gcc.success) {
    console.log("skipped: gcc is not installed; cannot compare with asm/bootparam.h");
    return;
  }
  const fields: Array<[string, Field]> = [
    ...Object.entries(SETUP_HEADER).map(([k, f]) => [`hdr.${k}`, f] as [string, Field]),
    ...Object.entries(BOOT_PARAMS).map(([k, f]) => [k, f] as [string, Field]),
  ];
  const lines = fields.map(([name]) =>
    `printf("${name} %zu %zu\\n", offsetof(struct boot_params, ${name}), ` +
    `sizeof(((struct boot_params *)0)->${name}));`
  );
  lines.push(
    `printf("e820_table %zu %zu\\n", offsetof(struct boot_params, e820_table), ` +
      `sizeof(struct boot_e820_entry));`,
    `printf("hdr %zu %zu\\n", offsetof(struct boot_params, hdr), sizeof(struct boot_params));`,
    `printf("e820_max %d %zu\\n", E820_MAX_ENTRIES_ZEROPAGE, ` +
      `offsetof(struct boot_e820_entry, type));`,
  );
  const dir = await Deno.makeTempDir();
  try {
    const src = `#include <stdio.h>\n#include <stddef.h>\n#include <asm/bootparam.h>\n` +
      `int main(void){\n${lines.join("\n")}\nreturn 0;}\n`;
    await Deno.writeTextFile(`${dir}/bp.c`, src);
    const cc = await new Deno.Command("gcc", { args: ["-o", `${dir}/bp`, `${dir}/bp.c`] })
      .output();
    if (!cc.success) {
      console.log(
        `skipped: asm/bootparam.h did not compile: ${new TextDecoder().decode(cc.stderr)}`,
      );
      return;
    }
    const out = new TextDecoder().decode((await new Deno.Command(`${dir}/bp`).output()).stdout);
    const k = new Map(
      out.trim().split("\n").map((l) => {
        const [name, a, b] = l.split(" ");
        return [name, [Number(a), Number(b)]] as const;
      }),
    );
    for (const [name, f] of fields) {
      assertEquals(
        `${name} @${f.offset} w${f.width}`,
        `${name} @${k.get(name)![0]} w${k.get(name)![1]}`,
      );
    }
    assertEquals(k.get("e820_table"), [E820_TABLE.offset, E820_TABLE.entrySize]);
    assertEquals(k.get("hdr"), [SETUP_HEADER_OFFSET, BOOT_PARAMS_SIZE]);
    assertEquals(k.get("e820_max"), [E820_TABLE.maxEntries, E820_TABLE.type]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

// ---------------------------------------------------------------------------------------------
// setup header

Deno.test("setup header of the installed Debian cloud kernel matches its build config", () => {
  if (!realKernel) {
    console.log("skipped: no /boot/vmlinuz-* on this machine (install linux-image-cloud-amd64)");
    return;
  }
  const hdr = parseBzImage(Deno.readFileSync(realKernel), realKernel);
  assert(hdr.version >= 0x020c, `protocol ${protocolText(hdr.version)} >= 2.12`);
  assert(hdr.xloadflags & XLOADFLAGS.XLF_KERNEL_64, "XLF_KERNEL_64");
  assert(hdr.loadflags & LOADFLAGS.LOADED_HIGH, "bzImage loads high");
  assertEquals(hdr.code32Start, HIGH);
  assert(hdr.initSize > hdr.protectedModeSize, "init_size covers the decompressed kernel");
  assert(hdr.cmdlineSize >= 255, `cmdline_size ${hdr.cmdlineSize}`);
  assert(hdr.initrdAddrMax >= 0x37ffffff, `initrd_addr_max 0x${hdr.initrdAddrMax.toString(16)}`);
  const release = realKernel.replace(/.*\/vmlinuz-/, "");
  assert(hdr.kernelVersion?.startsWith(`${release} `), `version string ${hdr.kernelVersion}`);
  const config = readTextSync(realKernel.replace("vmlinuz-", "config-"));
  if (!config) {
    console.log(`skipped config comparison: no config file next to ${realKernel}`);
    return;
  }
  const opt = (name: string) => config.match(new RegExp(`^${name}=(.*)$`, "m"))?.[1];
  assertEquals(hdr.relocatable, opt("CONFIG_RELOCATABLE") === "y");
  assertEquals(hdr.kernelAlignment, Number(opt("CONFIG_PHYSICAL_ALIGN")));
  assertEquals(hdr.prefAddress, BigInt(opt("CONFIG_PHYSICAL_START") ?? "0"));
});

Deno.test("setup header of a synthetic bzImage is parsed field by field", () => {
  const hdr = parseBzImage(fakeBzImage(), "fake");
  assertEquals(hdr.version, 0x020f);
  assertEquals(protocolText(hdr.version), "2.15");
  assertEquals(hdr.setupSects, 4);
  assertEquals(hdr.setupSize, 5 * 512);
  assertEquals(hdr.protectedModeSize, 256 * 1024);
  assertEquals(hdr.kernelAlignment, 2 * MiB);
  assertEquals(hdr.relocatable, true);
  assertEquals(hdr.initSize, 8 * MiB);
  assertEquals(hdr.prefAddress, 16n * BigInt(MiB));
  assertEquals(hdr.cmdlineSize, 2047);
  assertEquals(hdr.initrdAddrMax, 0x7fffffff);
  assertEquals(hdr.headerEnd, 0x26c);
  assertEquals(hdr.kernelVersion, "6.99.0-fake (test) #1");
});

// ---------------------------------------------------------------------------------------------
// loadLinux

Deno.test("loadLinux fills boot_params: loader type, flags, command line, initrd, sentinel", () => {
  const memSize = 128 * MiB;
  const ram = new Uint8Array(memSize);
  const kernel = fakeBzImage();
  const initrd = new Uint8Array(3 * MiB + 123).map((_, i) => i & 0xff);
  const cmdline = "console=ttyS0 panic=-1 rdinit=/init";
  const setup = loadLinux(ram, { kernel, kernelPath: "fake", initrd, cmdline, memSize });
  const dv = zeroPage(ram, setup);
  const H = SETUP_HEADER;
  assertEquals(readField(dv, H.type_of_loader), 0xff);
  const flags = readField(dv, H.loadflags);
  assert(flags & LOADFLAGS.LOADED_HIGH && flags & LOADFLAGS.CAN_USE_HEAP, `loadflags ${flags}`);
  assertEquals(readField(dv, H.heap_end_ptr), 0xfe00);
  assertEquals(readField(dv, BOOT_PARAMS.sentinel), 0, "sentinel must not be copied");
  assertEquals(readField(dv, H.header), 0x53726448, "setup header copied from the image");
  assertEquals(readField(dv, H.cmdline_size), 2047);
  assertEquals(readField(dv, BOOT_PARAMS.ext_cmd_line_ptr), 0);
  assertEquals(cString(ram, readField(dv, H.cmd_line_ptr)), cmdline);
  const rdAddr = readField(dv, H.ramdisk_image);
  assertEquals(readField(dv, H.ramdisk_size), initrd.length);
  assertEquals(readField(dv, BOOT_PARAMS.ext_ramdisk_image), 0);
  assertEquals(rdAddr % 4096, 0, "initrd page-aligned");
  assert(rdAddr + initrd.length <= memSize, "initrd below memSize");
  assert(rdAddr + initrd.length > memSize - 4096, "initrd placed as high as it goes");
  assertEquals(ram.subarray(rdAddr, rdAddr + initrd.length), initrd);
  assertEquals(readField(dv, H.code32_start), Number(setup.kernelAddr));
});

Deno.test("loadLinux puts the protected-mode kernel at pref_address and enters at +0x200", () => {
  const memSize = 128 * MiB;
  const ram = new Uint8Array(memSize);
  const kernel = fakeBzImage();
  const setup = loadLinux(ram, { kernel, kernelPath: "fake", cmdline: "", memSize });
  assertEquals(setup.kernelAddr, 16n * BigInt(MiB));
  assertEquals(setup.rip, setup.kernelAddr + 0x200n);
  const pm = protectedModeKernel(kernel, setup.header);
  const at = Number(setup.kernelAddr);
  assertEquals(ram.subarray(at, at + pm.length), pm);
  const dv = zeroPage(ram, setup);
  assertEquals(readField(dv, SETUP_HEADER.ramdisk_image), 0, "no initrd, no ramdisk fields");
  assertEquals(readField(dv, SETUP_HEADER.ramdisk_size), 0);
});

Deno.test("loadLinux falls back to 1 MiB when pref_address leaves no room for kernel and initrd", () => {
  const memSize = 64 * MiB;
  const ram = new Uint8Array(memSize);
  // From 16 MiB, init_size 40 MiB plus a 10 MiB initrd overflows 64 MiB; from 2 MiB it fits.
  const kernel = fakeBzImage({ initSize: 40 * MiB });
  const initrd = new Uint8Array(10 * MiB);
  const setup = loadLinux(ram, { kernel, kernelPath: "fake", initrd, cmdline: "", memSize });
  assertEquals(setup.kernelAddr, BigInt(HIGH));
  const pm = protectedModeKernel(kernel, setup.header);
  assertEquals(ram.subarray(HIGH, HIGH + pm.length), pm);
  const rd = readField(zeroPage(ram, setup), SETUP_HEADER.ramdisk_image);
  assert(rd >= 2 * MiB + 40 * MiB, "initrd above the kernel's init_size window");
});

Deno.test("e820 in the zero page is sorted, non-overlapping, and RAM totals memSize minus the hole", () => {
  const memSize = 96 * MiB;
  const ram = new Uint8Array(memSize);
  const setup = loadLinux(ram, { kernel: fakeBzImage(), kernelPath: "f", cmdline: "", memSize });
  const table = readE820(zeroPage(ram, setup));
  assertEquals(table, setup.e820);
  assertEquals(table, [
    { addr: 0n, size: BigInt(EBDA), type: E820_TYPE.RAM },
    { addr: BigInt(EBDA), size: BigInt(HIGH - EBDA), type: E820_TYPE.RESERVED },
    { addr: BigInt(HIGH), size: BigInt(memSize - HIGH), type: E820_TYPE.RAM },
  ]);
});

Deno.test("e820 moves RAM beyond 3 GiB above 4 GiB and keeps every map consistent", () => {
  for (const memSize of [64 * MiB, 3 * GiB - 4096, 3 * GiB, 3 * GiB + 4096, 8 * GiB, 100 * GiB]) {
    const map = linuxE820(memSize);
    let ram = 0n;
    for (let i = 0; i < map.length; i++) {
      if (i) assert(map[i - 1].addr + map[i - 1].size <= map[i].addr, `sorted at ${memSize}`);
      assert(map[i].size > 0n, "no empty entries");
      if (map[i].type === E820_TYPE.RAM) ram += map[i].size;
      const end = map[i].addr + map[i].size;
      assert(!(map[i].addr < BigInt(4 * GiB) && end > BigInt(3 * GiB)), "nothing in 3..4 GiB");
    }
    assertEquals(ram, BigInt(memSize - (HIGH - EBDA)), `RAM total at ${memSize}`);
    assertEquals(map.length, memSize > 3 * GiB ? 4 : 3);
  }
  assertEquals(linuxE820(8 * GiB)[3], {
    addr: BigInt(4 * GiB),
    size: BigInt(5 * GiB),
    type: E820_TYPE.RAM,
  });
});

Deno.test("page tables identity-map 0..4 GiB with writable 2 MiB pages", () => {
  const memSize = 64 * MiB;
  const ram = new Uint8Array(memSize);
  const setup = loadLinux(ram, { kernel: fakeBzImage(), kernelPath: "f", cmdline: "", memSize });
  for (let page = 0n; page < 4n * BigInt(GiB); page += 2n * BigInt(MiB)) {
    for (const off of [0n, 0x1234n, 2n * BigInt(MiB) - 1n]) {
      assertEquals(translate(ram, setup.cr3, page + off), page + off);
    }
  }
  assertEquals(translate(ram, setup.cr3, 4n * BigInt(GiB)), undefined, "nothing above 4 GiB");
  // The tables themselves must sit in RAM the e820 map offers below the EBDA.
  assert(setup.cr3 < BigInt(EBDA) && setup.rsi < BigInt(EBDA) && setup.gdtBase < BigInt(EBDA));
});

Deno.test("linuxSregs enters long mode with flat __BOOT_CS/__BOOT_DS that match the GDT", () => {
  const memSize = 64 * MiB;
  const ram = new Uint8Array(memSize);
  const setup = loadLinux(ram, { kernel: fakeBzImage(), kernelPath: "f", cmdline: "", memSize });
  const base = kvmSregs.zero();
  base.apic_base = 0xfee00900n;
  const s = linuxSregs(base, setup);
  assertEquals(s.apic_base, 0xfee00900n, "untouched fields kept");
  assertEquals(s.cr0 & 0x80000031n, 0x80000031n, "PE|ET|NE|PG");
  assertEquals(s.cr4 & 0x20n, 0x20n, "PAE");
  assertEquals(s.efer & 0x500n, 0x500n, "LME|LMA");
  assertEquals(s.cr3, setup.cr3);
  assertEquals(s.gdt, { base: setup.gdtBase, limit: setup.gdtLimit });
  assertEquals(
    [s.cs.selector, s.cs.type, s.cs.s, s.cs.l, s.cs.db, s.cs.present, s.cs.dpl, s.cs.g],
    [
      0x10,
      0xb,
      1,
      1,
      0,
      1,
      0,
      1,
    ],
  );
  for (const seg of [s.ds, s.es, s.ss, s.fs, s.gs]) {
    assertEquals([seg.selector, seg.type, seg.db, seg.s, seg.present, seg.g], [
      0x18,
      3,
      1,
      1,
      1,
      1,
    ]);
  }
  const gdt = new DataView(ram.buffer, Number(setup.gdtBase), setup.gdtLimit + 1);
  assertEquals(gdt.getBigUint64(0, true), 0n, "null descriptor");
  assertEquals(gdt.getBigUint64(0x10, true), 0x00af9b000000ffffn, "64-bit code, as Linux's own");
  assertEquals(gdt.getBigUint64(0x18, true), 0x00cf93000000ffffn, "flat data, as Linux's own");
  assertEquals(gdt.getBigUint64(0x10, true), gdtDescriptor(s.cs));
  assertEquals(gdt.getBigUint64(0x18, true), gdtDescriptor(s.ds));
  const regs = linuxRegs(setup);
  assertEquals([regs.rip, regs.rsi, regs.rflags], [setup.rip, setup.rsi, 2n]);
});

Deno.test("the installed kernel loads with an initramfs into 256 MiB and 64 MiB guests", async () => {
  if (!realKernel) {
    console.log("skipped: no /boot/vmlinuz-* on this machine (install linux-image-cloud-amd64)");
    return;
  }
  const kernel = await Deno.readFile(realKernel);
  const initrd = new Uint8Array(2 * MiB).fill(0x5a);
  for (const [memSize, where] of [[256 * MiB, "pref_address"], [64 * MiB, "1 MiB"]] as const) {
    const ram = new Uint8Array(memSize);
    const cmdline = "console=ttyS0 earlyprintk=serial panic=-1";
    // The bzImage placement rules; the extracted-vmlinux path is covered by boot_vmlinux_test.ts.
    const setup = loadLinux(ram, {
      kernel,
      kernelPath: realKernel,
      initrd,
      cmdline,
      memSize,
      prefer: "bzimage",
    });
    assertEquals(setup.entry, "bzimage");
    const expected = where === "1 MiB" ? BigInt(HIGH) : setup.header.prefAddress;
    assertEquals(setup.kernelAddr, expected, `${memSize / MiB} MiB guest loads at ${where}`);
    const pm = protectedModeKernel(kernel, setup.header);
    const at = Number(setup.kernelAddr);
    assertEquals(ram.subarray(at, at + 4096), pm.subarray(0, 4096));
    assertEquals(
      ram.subarray(at + pm.length - 4096, at + pm.length),
      pm.subarray(pm.length - 4096),
    );
    const dv = zeroPage(ram, setup);
    assertEquals(
      ram.subarray(Number(setup.rsi) + 0x1f1, Number(setup.rsi) + 0x1f1 + 0x10),
      kernel.subarray(0x1f1, 0x201),
      "setup header copied verbatim",
    );
    const rd = readField(dv, SETUP_HEADER.ramdisk_image);
    const kernelRunEnd = Math.ceil(at / (2 * MiB)) * 2 * MiB + setup.header.initSize;
    assert(rd >= kernelRunEnd, "initrd clear of the kernel's init_size window");
    assertEquals(readField64(dv, SETUP_HEADER.pref_address), setup.header.prefAddress);
  }
});

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
