/**
 * Loads a Linux bzImage for the 64-bit boot protocol (Documentation/arch/x86/boot.rst, "64-bit
 * Boot Protocol"): the VMM enters the kernel in long mode, with the zero page in %rsi, flat
 * __BOOT_CS/__BOOT_DS segments and identity-mapped page tables, so no firmware and no real-mode
 * setup code ever run (which matters under PVM, where ring-0 code is emulated). When it can decode
 * the compressed payload it also skips the kernel's decompressor: it loads the vmlinux ELF's
 * segments itself and enters startup_64 of the kernel proper, as Firecracker does.
 */
import type { Registers, Segment, SpecialRegisters } from "../../accel/cpu_state.ts";
import {
  BOOT_PARAMS,
  BOOT_PARAMS_SIZE,
  E820_TABLE,
  E820_TYPE,
  type Field,
  LOADFLAGS,
  SETUP_HEADER,
  SETUP_HEADER_OFFSET,
  writeField,
  writeField64,
} from "./boot_params.ts";
import {
  BootImageError,
  type BzImageHeader,
  parseBzImage,
  protectedModeKernel,
  setupHeaderBytes,
} from "./bzimage.ts";
import { type Elf64, loadElfSegments, loadSpan, parseElf64, physicalEntry } from "./elf.ts";
import { extractVmlinux, type PayloadFormat, payloadFormatOf } from "./vmlinux.ts";
import { PAGE_SIZE } from "../../accel/accel.ts";

const KiB = 1024;
const MiB = 1024 * KiB;
const GiB = 1024 * MiB;

/** Below this a Debian cloud kernel cannot decompress itself and still boot userspace. */
export const MIN_LINUX_MEMORY = 64 * MiB;

/**
 * Where the loader puts things. Everything it builds lives below the EBDA, which Linux reserves
 * (it keeps the whole first MiB to itself) and only reads before it has copied what it needs.
 */
export const LINUX_LAYOUT = {
  /** The boot GDT (4 descriptors). */
  gdt: 0x500,
  /** boot_params, the "zero page". */
  zeroPage: 0x7000,
  /** Initial %rsp: top of the page below the page tables. */
  stackTop: 0x8ff0,
  /** PML4, PDPT, then four page directories (1 GiB each), one page apiece. */
  pml4: 0x9000,
  pdpt: 0xa000,
  pd: 0xb000,
  /** The command line buffer and its size. */
  cmdline: 0x20000,
  cmdlineMax: 0x10000,
  /** Extended BIOS Data Area start: 640 KiB minus 1 KiB; reserved up to 1 MiB. */
  ebda: 0x9fc00,
  /** The classic "high memory" start where the protected-mode kernel goes by default. */
  highMemory: 0x100000,
  /** RAM beyond this moves above 4 GiB, leaving room for 32-bit MMIO. */
  mmioGapStart: 3 * GiB,
  mmioGapEnd: 4 * GiB,
} as const;

// The 64-bit entry point's offset in the protected-mode kernel (startup_64).
const STARTUP_64_OFFSET = 0x200;
// boot.rst: type_of_loader 0xff is "undefined", the right id for a loader without an assigned one.
const LOADER_UNDEFINED = 0xff;
// End of a 64 KiB real-mode segment minus 0x200, as boot.rst describes heap_end_ptr.
const HEAP_END_PTR = 0xfe00;
// Four 1 GiB page directories identity-map the 32-bit address space.
const PAGE_DIRECTORIES = 4;
const PT_PRESENT = 1n << 0n;
const PT_WRITABLE = 1n << 1n;
const PT_LARGE = 1n << 7n;
const LARGE_PAGE = 2 * MiB;
const ENTRIES_PER_TABLE = 512;

const CR0 = { PE: 1n << 0n, ET: 1n << 4n, NE: 1n << 5n, PG: 1n << 31n } as const;
const CR4 = { PAE: 1n << 5n } as const;
const EFER = { LME: 1n << 8n, LMA: 1n << 10n } as const;

function flatSegment(selector: number, type: number, l: number, db: number): Segment {
  return {
    base: 0n,
    limit: 0xffffffff,
    selector,
    type,
    present: 1,
    dpl: 0,
    db,
    s: 1,
    l,
    g: 1,
    avl: 0,
    unusable: 0,
  };
}

// __BOOT_CS and __BOOT_DS are GDT entries 2 and 3; the 64-bit entry requires exactly these.
// Type 0xb is execute/read, accessed; type 3 is read/write, accessed.
const BOOT_CS = flatSegment(0x10, 0xb, 1, 0);
const BOOT_DS = flatSegment(0x18, 0x3, 0, 1);
const GDT_ENTRIES = 4;

/** One e820 region as the zero page carries it. */
export interface E820Entry {
  /** Start address. */
  addr: bigint;
  /** Length in bytes. */
  size: bigint;
  /** E820_TYPE.RAM or E820_TYPE.RESERVED. */
  type: number;
}

/**
 * How the kernel is entered: "vmlinux-elf" runs the extracted kernel proper at its ELF entry,
 * "bzimage" runs the image's decompressor at load address + 0x200.
 */
export type LinuxEntryKind = "vmlinux-elf" | "bzimage";

/** What the vCPU needs to enter the loaded kernel, plus where things went. */
export interface LinuxBootSetup {
  /** Which path was taken (see LinuxEntryKind). */
  entry: LinuxEntryKind;
  /** The compressed payload's format, as recognised by its magic bytes. */
  payloadFormat: PayloadFormat;
  /** Why the bzImage path was taken, when it was. */
  fallbackReason?: string;
  /** The command line as written to guest memory (the ELF path adds `nokaslr`). */
  cmdline: string;
  /** The 64-bit entry: the ELF's physical entry, or the bzImage's load address + 0x200. */
  rip: bigint;
  /** Guest-physical address of boot_params. */
  rsi: bigint;
  /** A small stack below the page tables; the kernel sets its own at once. */
  rsp: bigint;
  /** GDT base and limit for `linuxSregs`. */
  gdtBase: bigint;
  gdtLimit: number;
  /** PML4 address. */
  cr3: bigint;
  /** The memory map given to the kernel. */
  e820: E820Entry[];
  /** Where the kernel was loaded: the protected-mode kernel, or the lowest ELF segment. */
  kernelAddr: bigint;
  /** First byte after the loaded kernel (for the ELF path, the end of its highest segment). */
  kernelEnd: bigint;
  /** The parsed setup header. */
  header: BzImageHeader;
}

/** Inputs to `loadLinux`. */
export interface LoadLinuxOptions {
  /** The bzImage bytes. */
  kernel: Uint8Array;
  /** The bzImage's path, for messages. */
  kernelPath: string;
  /** An initramfs, loaded high. */
  initrd?: Uint8Array;
  /** The initrd's path, for messages. */
  initrdPath?: string;
  /** The kernel command line (ASCII, no NUL). */
  cmdline: string;
  /** Guest RAM size in bytes; above 3 GiB the rest is mapped from 4 GiB up. */
  memSize: number;
  /**
   * "bzimage" forces the kernel's own decompressor; the default, "vmlinux-elf", loads the
   * extracted ELF whenever the payload's compression is one this VMM decodes.
   */
  prefer?: LinuxEntryKind;
}

/** The guest memory map for `memSize` bytes of RAM: low RAM, the EBDA/BIOS hole, high RAM. */
export function linuxE820(memSize: number): E820Entry[] {
  const L = LINUX_LAYOUT;
  if (memSize <= L.highMemory) throw new RangeError(`memSize ${memSize} is not above 1 MiB`);
  const entry = (addr: number, size: number, type: number) => ({
    addr: BigInt(addr),
    size: BigInt(size),
    type,
  });
  const map = [
    entry(0, L.ebda, E820_TYPE.RAM),
    entry(L.ebda, L.highMemory - L.ebda, E820_TYPE.RESERVED),
    entry(L.highMemory, Math.min(memSize, L.mmioGapStart) - L.highMemory, E820_TYPE.RAM),
  ];
  if (memSize > L.mmioGapStart) {
    map.push(entry(L.mmioGapEnd, memSize - L.mmioGapStart, E820_TYPE.RAM));
  }
  return map;
}

/**
 * Writes kernel, initrd, command line, zero page, GDT and page tables into `ram` (guest memory
 * from GPA 0; only the part below min(memSize, 3 GiB) is touched) and returns the entry state.
 */
export function loadLinux(ram: Uint8Array, opts: LoadLinuxOptions): LinuxBootSetup {
  const { kernel, kernelPath, initrd, memSize } = opts;
  if (memSize < MIN_LINUX_MEMORY) {
    throw new BootImageError(
      kernelPath,
      `guest memory of ${mib(memSize)} is below the ${mib(MIN_LINUX_MEMORY)} a Linux guest ` +
        `needs; give the VM at least ${mib(MIN_LINUX_MEMORY)}`,
    );
  }
  const top = Math.min(memSize, LINUX_LAYOUT.mmioGapStart);
  if (ram.length < top) {
    throw new RangeError(`guest memory view is ${ram.length} bytes, expected at least ${top}`);
  }
  const hdr = parseBzImage(kernel, kernelPath);
  const vmlinux = opts.prefer === "bzimage" ? undefined : extractVmlinux(kernel, hdr, kernelPath);
  // ELF offsets are in the decompressed image, not in the file: say so in messages.
  const elfPath = `${kernelPath} (extracted vmlinux)`;
  const elf = vmlinux?.ok
    ? { image: vmlinux.elf, elf: parseElf64(vmlinux.elf, elfPath) }
    : undefined;
  // The extracted kernel must run where it was linked: only the decompressor applies its
  // relocations. The kernel proper checks KASLR_FLAG (cleared below, in the zero page); nokaslr
  // records the same on the command line for anything else that reads it, and for the reader of
  // the console log.
  const cmdlineText = elf ? withNokaslr(opts.cmdline) : opts.cmdline;
  const cmdline = encodeCmdline(cmdlineText, hdr, kernelPath);
  const place = elf
    ? placeElf(elf.elf, elfPath, initrd?.length ?? 0, memSize, hdr, opts)
    : placeImages(hdr, initrd?.length ?? 0, memSize, opts);
  // Found before anything is written, so a refusal leaves guest memory untouched.
  const rip = elf ? physicalEntry(elf.elf, elfPath) : BigInt(place.kernelAddr + STARTUP_64_OFFSET);

  if (elf) loadElfSegments(ram, elf.image, elf.elf, elfPath, place.initrdAddr);
  else ram.set(protectedModeKernel(kernel, hdr), place.kernelAddr);
  if (initrd) ram.set(initrd, place.initrdAddr);
  ram.fill(0, LINUX_LAYOUT.cmdline, LINUX_LAYOUT.cmdline + LINUX_LAYOUT.cmdlineMax);
  ram.set(cmdline, LINUX_LAYOUT.cmdline);

  const e820 = linuxE820(memSize);
  writeZeroPage(ram, kernel, hdr, {
    kernelAddr: place.kernelAddr,
    initrdAddr: initrd ? place.initrdAddr : 0,
    initrdSize: initrd?.length ?? 0,
    e820,
  });
  const gdtLimit = writeGdt(ram);
  writePageTables(ram);
  return {
    entry: elf ? "vmlinux-elf" : "bzimage",
    payloadFormat: vmlinux?.format ?? payloadFormatOf(kernel, hdr),
    ...(vmlinux && !vmlinux.ok ? { fallbackReason: vmlinux.reason } : {}),
    ...(opts.prefer === "bzimage" ? { fallbackReason: "bzimage requested" } : {}),
    cmdline: cmdlineText,
    rip,
    rsi: BigInt(LINUX_LAYOUT.zeroPage),
    rsp: BigInt(LINUX_LAYOUT.stackTop),
    gdtBase: BigInt(LINUX_LAYOUT.gdt),
    gdtLimit,
    cr3: BigInt(LINUX_LAYOUT.pml4),
    e820,
    kernelAddr: BigInt(place.kernelAddr),
    kernelEnd: BigInt(place.kernelEnd),
    header: hdr,
  };
}

/** Special registers for the 64-bit entry: long mode, paging on, flat boot segments. */
export function linuxSregs(base: SpecialRegisters, setup: LinuxBootSetup): SpecialRegisters {
  return {
    ...base,
    cs: { ...BOOT_CS },
    ds: { ...BOOT_DS },
    es: { ...BOOT_DS },
    fs: { ...BOOT_DS },
    gs: { ...BOOT_DS },
    ss: { ...BOOT_DS },
    gdt: { base: setup.gdtBase, limit: setup.gdtLimit },
    cr0: CR0.PE | CR0.ET | CR0.NE | CR0.PG,
    cr3: setup.cr3,
    cr4: CR4.PAE,
    efer: EFER.LME | EFER.LMA,
  };
}

/** General registers for the 64-bit entry: rip, rsi = boot_params, interrupts off. */
export function linuxRegs(setup: LinuxBootSetup): Registers {
  const zero = Object.fromEntries(REGISTER_NAMES.map((r) => [r, 0n])) as Record<string, bigint>;
  // RFLAGS bit 1 is reserved and must be set; IF stays clear as the protocol requires.
  return { ...zero, rip: setup.rip, rsi: setup.rsi, rsp: setup.rsp, rflags: 2n } as Registers;
}

// Every field of `Registers`, for the all-zero register file the 64-bit entry starts from.
const REGISTER_NAMES = [
  ...["rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp", "r8", "r9", "r10", "r11"],
  ...["r12", "r13", "r14", "r15", "rip", "rflags"],
] as const satisfies ReadonlyArray<keyof Registers>;

/** Encodes the GDT descriptor for a flat segment described as the neutral `Segment` does. */
export function gdtDescriptor(seg: Segment): bigint {
  const limit = BigInt(seg.g ? seg.limit >>> 12 : seg.limit);
  const access = BigInt(seg.type | (seg.s << 4) | (seg.dpl << 5) | (seg.present << 7));
  const flags = BigInt(seg.avl | (seg.l << 1) | (seg.db << 2) | (seg.g << 3));
  return (limit & 0xffffn) | ((seg.base & 0xffffffn) << 16n) | (access << 40n) |
    (((limit >> 16n) & 0xfn) << 48n) | (flags << 52n) | (((seg.base >> 24n) & 0xffn) << 56n);
}

function writeGdt(ram: Uint8Array): number {
  const dv = view(ram, LINUX_LAYOUT.gdt, GDT_ENTRIES * 8);
  for (let i = 0; i < GDT_ENTRIES; i++) dv.setBigUint64(i * 8, 0n, true);
  dv.setBigUint64(BOOT_CS.selector, gdtDescriptor(BOOT_CS), true);
  dv.setBigUint64(BOOT_DS.selector, gdtDescriptor(BOOT_DS), true);
  return GDT_ENTRIES * 8 - 1;
}

function writePageTables(ram: Uint8Array): void {
  const L = LINUX_LAYOUT;
  const pml4 = view(ram, L.pml4, PAGE_SIZE);
  const pdpt = view(ram, L.pdpt, PAGE_SIZE);
  ram.fill(0, L.pml4, L.pd + PAGE_DIRECTORIES * PAGE_SIZE);
  pml4.setBigUint64(0, BigInt(L.pdpt) | PT_PRESENT | PT_WRITABLE, true);
  for (let d = 0; d < PAGE_DIRECTORIES; d++) {
    const pdAddr = L.pd + d * PAGE_SIZE;
    pdpt.setBigUint64(d * 8, BigInt(pdAddr) | PT_PRESENT | PT_WRITABLE, true);
    const pd = view(ram, pdAddr, PAGE_SIZE);
    for (let i = 0; i < ENTRIES_PER_TABLE; i++) {
      const phys = BigInt(d * ENTRIES_PER_TABLE + i) * BigInt(LARGE_PAGE);
      pd.setBigUint64(i * 8, phys | PT_PRESENT | PT_WRITABLE | PT_LARGE, true);
    }
  }
}

interface ZeroPageInputs {
  kernelAddr: number;
  initrdAddr: number;
  initrdSize: number;
  e820: E820Entry[];
}

function writeZeroPage(ram: Uint8Array, kernel: Uint8Array, hdr: BzImageHeader, z: ZeroPageInputs) {
  const zp = LINUX_LAYOUT.zeroPage;
  // Start clean and copy only the setup header, so the sentinel stays 0 (boot.rst's rule).
  ram.fill(0, zp, zp + BOOT_PARAMS_SIZE);
  ram.set(setupHeaderBytes(kernel, hdr), zp + SETUP_HEADER_OFFSET);
  const dv = view(ram, zp, BOOT_PARAMS_SIZE);
  const H = SETUP_HEADER;
  const B = BOOT_PARAMS;
  writeField(dv, H.type_of_loader, LOADER_UNDEFINED);
  writeField(dv, H.ext_loader_ver, 0);
  writeField(dv, H.ext_loader_type, 0);
  const loadflags = (hdr.loadflags & ~LOADFLAGS.KASLR_FLAG) | LOADFLAGS.LOADED_HIGH |
    LOADFLAGS.CAN_USE_HEAP;
  writeField(dv, H.loadflags, loadflags);
  writeField(dv, H.heap_end_ptr, HEAP_END_PTR);
  // boot.rst: a loader that puts a relocatable kernel elsewhere points code32_start at it.
  writeField(dv, H.code32_start, z.kernelAddr);
  writeSplit(dv, H.cmd_line_ptr, B.ext_cmd_line_ptr, LINUX_LAYOUT.cmdline);
  writeSplit(dv, H.ramdisk_image, B.ext_ramdisk_image, z.initrdAddr);
  writeSplit(dv, H.ramdisk_size, B.ext_ramdisk_size, z.initrdSize);
  writeField64(dv, H.setup_data, 0n);
  writeField(dv, B.e820_entries, z.e820.length);
  z.e820.forEach((e, i) => {
    const off = E820_TABLE.offset + i * E820_TABLE.entrySize;
    dv.setBigUint64(off + E820_TABLE.addr, e.addr, true);
    dv.setBigUint64(off + E820_TABLE.size, e.size, true);
    dv.setUint32(off + E820_TABLE.type, e.type, true);
  });
}

// A 64-bit value split over a 32-bit header field and its ext_* high half in boot_params.
function writeSplit(
  dv: DataView,
  low: Field<4>,
  high: Field<4>,
  value: number,
) {
  writeField(dv, low, value % 2 ** 32);
  writeField(dv, high, Math.floor(value / 2 ** 32));
}

function encodeCmdline(cmdline: string, hdr: BzImageHeader, kernelPath: string): Uint8Array {
  const bytes = new TextEncoder().encode(cmdline);
  if (bytes.includes(0)) {
    throw new BootImageError(kernelPath, "command line contains a NUL byte; remove it");
  }
  // Leave room for the NUL in our buffer as well as honouring the kernel's limit.
  const max = Math.min(hdr.cmdlineSize, LINUX_LAYOUT.cmdlineMax - 1);
  if (bytes.length > max) {
    throw new BootImageError(
      kernelPath,
      `command line is ${bytes.length} bytes but this kernel accepts at most ${max} ` +
        `(cmdline_size); shorten it`,
    );
  }
  return bytes;
}

interface Placement {
  kernelAddr: number;
  kernelEnd: number;
  initrdAddr: number;
}

/** Appends `nokaslr` to `cmdline` unless it already has that word. */
export function withNokaslr(cmdline: string): string {
  if (cmdline.split(/\s+/).includes("nokaslr")) return cmdline;
  return cmdline.trim() === "" ? "nokaslr" : `${cmdline} nokaslr`;
}

// The ELF path: the segments go where they are linked, the initrd as high as allowed above them.
function placeElf(
  elf: Elf64,
  elfPath: string,
  initrdSize: number,
  memSize: number,
  hdr: BzImageHeader,
  opts: LoadLinuxOptions,
): Placement {
  const top = Math.min(memSize, LINUX_LAYOUT.mmioGapStart);
  const { start, end } = loadSpan(elf, elfPath);
  if (start < LINUX_LAYOUT.highMemory) {
    throw new BootImageError(
      opts.kernelPath,
      `vmlinux segment at 0x${start.toString(16)} overlaps the first MiB, where the loader keeps ` +
        `boot_params and page tables; this kernel cannot boot from its ELF here`,
    );
  }
  const initrdTop = Math.min(top, hdr.initrdAddrMax + 1);
  const initrdAddr = initrdSize ? alignDown(initrdTop - initrdSize, PAGE_SIZE) : top;
  if (end <= initrdAddr) return { kernelAddr: start, kernelEnd: end, initrdAddr };
  const want = mib(alignUp(end + alignUp(initrdSize, PAGE_SIZE), MiB));
  if (end > top) {
    throw new BootImageError(
      opts.kernelPath,
      `kernel segments end at ${mib(end)} but the guest has ${mib(top)} below the 3 GiB line; ` +
        `give the VM at least ${want}`,
    );
  }
  throw new BootImageError(
    opts.initrdPath ?? "initrd",
    `initrd of ${mib(initrdSize)} does not fit between the kernel's end at ${mib(end)} and ` +
      `${mib(initrdTop)} (guest memory or initrd_addr_max); give the VM at least ${want} ` +
      `or use a smaller initrd`,
  );
}

// Chooses the kernel's load address and the initrd's: the initrd as high as allowed, the kernel at
// pref_address when kernel and initrd both fit that way, else at 1 MiB.
function placeImages(
  hdr: BzImageHeader,
  initrdSize: number,
  memSize: number,
  opts: LoadLinuxOptions,
): Placement {
  const top = Math.min(memSize, LINUX_LAYOUT.mmioGapStart);
  const high = LINUX_LAYOUT.highMemory;
  const pref = Number(hdr.prefAddress);
  const candidates = pref > high && pref < top && isAligned(pref, hdr.kernelAlignment)
    ? [pref, high]
    : [high];
  const initrdTop = Math.min(top, hdr.initrdAddrMax + 1);
  const initrdAddr = initrdSize ? alignDown(initrdTop - initrdSize, PAGE_SIZE) : top;
  for (const addr of candidates) {
    const end = kernelEnd(hdr, addr);
    if (end <= initrdAddr) return { kernelAddr: addr, kernelEnd: end, initrdAddr };
  }
  const end = kernelEnd(hdr, high);
  const want = mib(alignUp(end + alignUp(initrdSize, PAGE_SIZE), MiB));
  if (end > top) {
    throw new BootImageError(
      opts.kernelPath,
      `kernel needs memory up to ${mib(end)} (init_size ${mib(hdr.initSize)}) but the guest ` +
        `has ${mib(top)} below the 3 GiB line; give the VM at least ${want}`,
    );
  }
  throw new BootImageError(
    opts.initrdPath ?? "initrd",
    `initrd of ${mib(initrdSize)} does not fit between the kernel's end at ${mib(end)} and ` +
      `${mib(initrdTop)} (guest memory or initrd_addr_max); give the VM at least ${want} ` +
      `or use a smaller initrd`,
  );
}

// The highest byte the kernel may touch before it reads e820: the compressed image where we put
// it, and init_size from its run-time start (load address aligned up, or pref_address if fixed).
function kernelEnd(hdr: BzImageHeader, loadAddr: number): number {
  const runStart = hdr.relocatable
    ? alignUp(loadAddr, hdr.kernelAlignment || 1)
    : Number(hdr.prefAddress) || loadAddr;
  return Math.max(loadAddr + hdr.protectedModeSize, runStart + hdr.initSize);
}

function view(ram: Uint8Array, at: number, length: number): DataView {
  return new DataView(ram.buffer, ram.byteOffset + at, length);
}

const alignUp = (n: number, a: number) => Math.ceil(n / a) * a;
const alignDown = (n: number, a: number) => Math.floor(n / a) * a;
const isAligned = (n: number, a: number) => a === 0 || n % a === 0;
const mib = (n: number) => `${+(n / MiB).toFixed(1)} MiB`;
