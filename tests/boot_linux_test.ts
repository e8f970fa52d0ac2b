/**
 * The Linux boot path without running a kernel: boot_params layout against the kernel headers,
 * the setup header of the installed Debian kernel, what loadLinux writes into guest memory and the
 * entry registers. Refusals: boot_linux_refusal_test.ts; the initramfs: boot_initramfs_test.ts.
 */
import { assert, assertEquals } from "./helpers/assert.ts";
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
  XLOADFLAGS,
} from "../src/vmm/boot/boot_params.ts";
import { parseBzImage, protectedModeKernel, protocolText } from "../src/vmm/boot/bzimage.ts";
import {
  gdtDescriptor,
  linuxE820,
  linuxRegs,
  linuxSregs,
  loadLinux,
} from "../src/vmm/boot/linux.ts";
import { findGuestKernel } from "../src/vmm/boot/initramfs.ts";
import { cString, fakeBzImage, HIGH, MiB, zeroPage } from "./helpers/boot_image.ts";

const GiB = 1024 * MiB;
const EBDA = 0x9fc00;

// ---------------------------------------------------------------------------------------------
// helpers

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

function readTextSync(path: string): string | undefined {
  try {
    return Deno.readTextFileSync(path);
  } catch {
    return undefined;
  }
}

const realKernel = findGuestKernel();

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
