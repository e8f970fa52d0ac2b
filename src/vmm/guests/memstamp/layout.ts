/**
 * Guest-physical layout of the memstamp guest and the x86 system structures the VMM builds for it
 * (GDT, IDT, TSS, 2 MiB identity page tables). Offsets of the config page and status blocks are
 * shared with memstamp.S; tests/memstamp_test.ts checks the two agree.
 */
import { PAGE_SIZE } from "../../../accel/accel.ts";

/** Where each structure lives. */
export const LAYOUT = {
  GDT: 0x1000,
  IDT: 0x2000,
  TSS: 0x8000,
  TSS_STRIDE: 0x200,
  CONFIG: 0x4000,
  STATUS: 0x5000,
  STATUS_STRIDE: 0x100,
  CODE: 0x10000,
  PML4: 0x20000,
  PDPT: 0x21000,
  PD: 0x22000,
  KSTACKS: 0x30000,
  USTACKS: 0x50000,
  STACK_SIZE: 0x1000,
  TABLE: 0x100000,
  LAPIC: 0xfee00000,
} as const;

/** Most vCPUs the layout has room for. */
export const MAX_VCPUS = 32;
/** Largest guest: one memory slot below the 3 GiB PCI hole. */
export const MAX_MEM = 3 * 1024 * 1024 * 1024;
/** Smallest guest that leaves room for data pages. */
export const MIN_MEM = 4 * 1024 * 1024;

/** Byte offsets in the config page (u64 each). */
export const CFG = {
  MAGIC: 0x00,
  NVCPUS: 0x08,
  TABLE: 0x10,
  BASEGFN: 0x18,
  PAGES: 0x20,
  WS: 0x28,
  PATTERN: 0x30,
  STRIDE: 0x38,
  INTERVAL: 0x40,
  CMDSEQ: 0x48,
  CMD: 0x50,
  DELAY: 0x58,
  NONCE: 0x60,
} as const;

/** Byte offsets in a vCPU's status block (u64 each). */
export const STATUS = {
  PHASE: 0x00,
  WRITTEN: 0x08,
  TICKS: 0x10,
  PASSES: 0x18,
  CMDSEQ: 0x20,
  RESULT: 0x28,
  BADGFN: 0x30,
  REASON: 0x38,
  EXPECT: 0x40,
  FOUND: 0x48,
  VERIFIED: 0x50,
  START: 0x58,
  COUNT: 0x60,
  STAMPED: 0x68,
} as const;

/** Ports the guest reports on; EVENT is written as a dword, so it spans four ports. */
export const PORT = { EVENT: 0x510, FAULT: 0x514 } as const;
/** Event codes in the low 16 bits of a PORT.EVENT write (vCPU index in the high 16). */
export const EVENT = { STAMPED: 1, PROGRESS: 2, CMD_DONE: 3 } as const;
/** Guest phases in STATUS.PHASE. */
export const PHASE = { INIT: 0, STAMPING: 1, RUNNING: 2, VERIFYING: 3 } as const;
/** Commands in CFG.CMD. */
export const CMD = { NONE: 0, VERIFY: 1 } as const;
/** Interrupt vectors. */
export const VECTOR = { TIMER: 0x40, SPURIOUS: 0xff } as const;
/** Config magic "MEMSTAMP". */
export const MAGIC = 0x504d41545354454dn;

/** GDT selectors. */
export const SEL = {
  KCODE: 0x08,
  KDATA: 0x10,
  UDATA: 0x23,
  UCODE: 0x2b,
  tss: (i: number) => 0x30 + 16 * i,
} as const;

/** Where the data pages start and how many there are, for a memory size. */
export function dataRegion(
  memSize: number,
): { tableBytes: number; baseGfn: number; pages: number } {
  const memPages = memSize / PAGE_SIZE;
  const tableBytes = Math.ceil((memPages * 4) / PAGE_SIZE) * PAGE_SIZE;
  const baseGfn = (LAYOUT.TABLE + tableBytes) / PAGE_SIZE;
  return { tableBytes, baseGfn, pages: memPages - baseGfn };
}

function segDesc(type: number, dpl: number, long: boolean): bigint {
  // Flat segment: base 0, limit 0xfffff pages; S=1, present, G=1; L for 64-bit code, else D/B.
  const access = BigInt(0x80 | (dpl << 5) | 0x10 | type);
  const flags = long ? 0xan : 0xcn;
  return 0xffffn | (access << 40n) | (0xfn << 48n) | (flags << 52n);
}

/** Writes the GDT: kernel/user flat segments and one 64-bit TSS descriptor per vCPU. */
export function writeGdt(mem: Uint8Array, nvcpus: number): number {
  const dv = new DataView(mem.buffer, mem.byteOffset + LAYOUT.GDT, PAGE_SIZE);
  dv.setBigUint64(0x08, segDesc(0xb, 0, true), true);
  dv.setBigUint64(0x10, segDesc(0x3, 0, false), true);
  dv.setBigUint64(0x18, segDesc(0xb, 3, false), true);
  dv.setBigUint64(0x20, segDesc(0x3, 3, false), true);
  dv.setBigUint64(0x28, segDesc(0xb, 3, true), true);
  for (let i = 0; i < nvcpus; i++) {
    const base = BigInt(LAYOUT.TSS + i * LAYOUT.TSS_STRIDE);
    const low = BigInt(TSS_LIMIT) | ((base & 0xffffffn) << 16n) | (0x8bn << 40n) |
      (((base >> 24n) & 0xffn) << 56n);
    dv.setBigUint64(SEL.tss(i), low, true);
    dv.setBigUint64(SEL.tss(i) + 8, base >> 32n, true);
  }
  return SEL.tss(nvcpus) - 1;
}

/** Writes the IDT: exceptions to the fault stubs, the timer vector, everything else spurious. */
export function writeIdt(
  mem: Uint8Array,
  handlers: { faultStubs: number; timer: number; spurious: number },
): number {
  const dv = new DataView(mem.buffer, mem.byteOffset + LAYOUT.IDT, PAGE_SIZE);
  for (let v = 0; v < 256; v++) {
    const target = v < 32
      ? handlers.faultStubs + 16 * v
      : v === VECTOR.TIMER
      ? handlers.timer
      : handlers.spurious;
    const off = v * 16;
    dv.setUint16(off, target & 0xffff, true);
    dv.setUint16(off + 2, SEL.KCODE, true);
    dv.setUint8(off + 4, 0);
    dv.setUint8(off + 5, 0x8e); // present, DPL 0, 64-bit interrupt gate
    dv.setUint16(off + 6, (target >>> 16) & 0xffff, true);
    dv.setUint32(off + 8, 0, true);
    dv.setUint32(off + 12, 0, true);
  }
  return 256 * 16 - 1;
}

const TSS_HEADER = 104;
const IO_BITMAP_BYTES = (PORT.EVENT >> 3) + 1;
/** TSS limit: header, I/O permission bitmap up to the report ports, and its 0xff terminator. */
export const TSS_LIMIT = TSS_HEADER + IO_BITMAP_BYTES;

/**
 * Writes each vCPU's TSS (RSP0 = its ring-0 stack, an I/O bitmap that opens only the report ports)
 * and leaves its status block address on that stack for the timer handler. The bitmap is needed
 * because PVM ignores IOPL for guest user mode; IOPL 3 is still set for hardware KVM.
 */
export function writeTss(mem: Uint8Array, nvcpus: number): void {
  const dv = new DataView(mem.buffer, mem.byteOffset);
  for (let i = 0; i < nvcpus; i++) {
    const tss = LAYOUT.TSS + i * LAYOUT.TSS_STRIDE;
    const rsp0 = kernelStackTop(i);
    dv.setBigUint64(tss + 4, BigInt(rsp0), true);
    dv.setUint16(tss + 102, TSS_HEADER, true);
    for (let b = 0; b <= IO_BITMAP_BYTES; b++) dv.setUint8(tss + TSS_HEADER + b, 0xff);
    for (let port = PORT.EVENT; port < PORT.EVENT + 4; port++) {
      const at = tss + TSS_HEADER + (port >> 3);
      dv.setUint8(at, dv.getUint8(at) & ~(1 << (port & 7)));
    }
    dv.setBigUint64(rsp0, BigInt(statusAddr(i)), true);
  }
}

/** RSP0 of vCPU `i`: 16 bytes below the top of its stack page, 16-byte aligned as the CPU wants. */
export function kernelStackTop(i: number): number {
  return LAYOUT.KSTACKS + (i + 1) * LAYOUT.STACK_SIZE - 16;
}

/** Initial user stack pointer of vCPU `i`. */
export function userStackTop(i: number): number {
  return LAYOUT.USTACKS + (i + 1) * LAYOUT.STACK_SIZE - 16;
}

/** Guest address of vCPU `i`'s status block. */
export function statusAddr(i: number): number {
  return LAYOUT.STATUS + i * LAYOUT.STATUS_STRIDE;
}

/** Writes 2 MiB identity page tables over guest RAM (user-accessible) and the LAPIC page (kernel). */
export function writePageTables(mem: Uint8Array, memSize: number): bigint {
  const dv = new DataView(mem.buffer, mem.byteOffset);
  const P = 1n, RW = 2n, US = 4n, PWT = 8n, PCD = 0x10n, PS = 0x80n;
  dv.setBigUint64(LAYOUT.PML4, BigInt(LAYOUT.PDPT) | P | RW | US, true);
  for (let g = 0; g < 4; g++) {
    dv.setBigUint64(LAYOUT.PDPT + 8 * g, BigInt(LAYOUT.PD + g * PAGE_SIZE) | P | RW | US, true);
  }
  const big = 2 * 1024 * 1024;
  for (let addr = 0; addr < memSize; addr += big) {
    dv.setBigUint64(LAYOUT.PD + (addr / big) * 8, BigInt(addr) | P | RW | US | PS, true);
  }
  dv.setBigUint64(
    LAYOUT.PD + (LAYOUT.LAPIC / big) * 8,
    BigInt(LAYOUT.LAPIC) | P | RW | PWT | PCD | PS,
    true,
  );
  return BigInt(LAYOUT.PML4);
}
