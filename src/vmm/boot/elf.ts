/**
 * ELF64 (x86-64, little-endian) header and program-header parsing, and copying PT_LOAD segments
 * into guest memory at their physical addresses: what a VMM needs to boot an uncompressed vmlinux.
 */

import { BootImageError } from "./bzimage.ts";

/**
 * Bad ELF input; names the file and the byte offset in it where the problem is. A BootImageError,
 * so whoever reports bad boot inputs reports this one too.
 */
export class ElfError extends BootImageError {
  /** Byte offset in the ELF image where the problem was found. */
  readonly offset: number;
  /** What is wrong, without the path and offset. */
  readonly reason: string;

  /** `reason` says what is wrong; the message prefixes it with `path` and `offset`. */
  constructor(path: string, offset: number, reason: string) {
    super(path, `ELF at offset 0x${offset.toString(16)}: ${reason}`);
    this.name = "ElfError";
    this.offset = offset;
    this.reason = reason;
  }
}

/** `p_type` of a loadable segment. */
export const PT_LOAD = 1;
/** `e_machine` for x86-64. */
export const EM_X86_64 = 62;
/** `e_type` of an executable. */
export const ET_EXEC = 2;
/** Where x86-64 Linux maps the kernel image (`__START_KERNEL_map`). */
export const START_KERNEL_MAP = 0xffffffff80000000n;

const ELF_MAGIC = 0x464c457f; // "\x7fELF" as a little-endian u32
const ELFCLASS64 = 2;
const ELFDATA2LSB = 1;
const EHDR_SIZE = 64;
const PHDR_SIZE = 56;

/** One program header. */
export interface ElfProgramHeader {
  /** Offset of this header in the file, for messages. */
  at: number;
  /** `p_type`. */
  type: number;
  /** `p_flags`. */
  flags: number;
  /** `p_offset`: where the segment's bytes start in the file. */
  offset: number;
  /** `p_vaddr`. */
  vaddr: bigint;
  /** `p_paddr`: where it goes in physical memory. */
  paddr: bigint;
  /** `p_filesz`: bytes present in the file. */
  filesz: number;
  /** `p_memsz`: bytes in memory; the rest beyond `filesz` is zero. */
  memsz: number;
}

/** A parsed ELF64 executable. */
export interface Elf64 {
  /** `e_type`. */
  type: number;
  /** `e_machine`. */
  machine: number;
  /** `e_entry` (for vmlinux a virtual address, or already physical). */
  entry: bigint;
  /** Every program header, in file order. */
  phdrs: ElfProgramHeader[];
}

/** Parses the ELF header and program headers of an x86-64 executable. */
export function parseElf64(image: Uint8Array, path: string): Elf64 {
  if (image.length < EHDR_SIZE) {
    throw new ElfError(path, 0, `${image.length} bytes is too small for an ELF64 header`);
  }
  const dv = new DataView(image.buffer, image.byteOffset, image.byteLength);
  if (dv.getUint32(0, true) !== ELF_MAGIC) throw new ElfError(path, 0, "no \\x7fELF magic");
  if (image[4] !== ELFCLASS64) throw new ElfError(path, 4, `EI_CLASS ${image[4]} is not ELF64`);
  if (image[5] !== ELFDATA2LSB) {
    throw new ElfError(path, 5, `EI_DATA ${image[5]} is not little-endian`);
  }
  const type = dv.getUint16(16, true);
  const machine = dv.getUint16(18, true);
  if (machine !== EM_X86_64) {
    throw new ElfError(path, 18, `e_machine ${machine} is not x86-64 (${EM_X86_64})`);
  }
  if (type !== ET_EXEC) throw new ElfError(path, 16, `e_type ${type} is not ET_EXEC`);
  const entry = dv.getBigUint64(24, true);
  const phoff = u64(dv, 32, path);
  const phentsize = dv.getUint16(54, true);
  const phnum = dv.getUint16(56, true);
  if (phentsize !== PHDR_SIZE) {
    throw new ElfError(path, 54, `e_phentsize ${phentsize} is not ${PHDR_SIZE}`);
  }
  if (phnum === 0) throw new ElfError(path, 56, "no program headers");
  if (phoff + phnum * PHDR_SIZE > image.length) {
    throw new ElfError(
      path,
      32,
      `${phnum} program headers at 0x${
        phoff.toString(16)
      } run past the file's ${image.length} bytes`,
    );
  }
  const phdrs: ElfProgramHeader[] = [];
  for (let i = 0; i < phnum; i++) {
    const at = phoff + i * PHDR_SIZE;
    const ph: ElfProgramHeader = {
      at,
      type: dv.getUint32(at, true),
      flags: dv.getUint32(at + 4, true),
      offset: u64(dv, at + 8, path),
      vaddr: dv.getBigUint64(at + 16, true),
      paddr: dv.getBigUint64(at + 24, true),
      filesz: u64(dv, at + 32, path),
      memsz: u64(dv, at + 40, path),
    };
    if (ph.type === PT_LOAD) {
      if (ph.filesz > ph.memsz) {
        throw new ElfError(path, at + 32, `p_filesz ${ph.filesz} exceeds p_memsz ${ph.memsz}`);
      }
      if (ph.offset + ph.filesz > image.length) {
        throw new ElfError(
          path,
          at + 8,
          `segment bytes 0x${ph.offset.toString(16)}+${ph.filesz} run past the file's ` +
            `${image.length} bytes`,
        );
      }
    }
    phdrs.push(ph);
  }
  return { type, machine, entry, phdrs };
}

/** The PT_LOAD segments of `elf`. */
export function loadSegments(elf: Elf64): ElfProgramHeader[] {
  return elf.phdrs.filter((p) => p.type === PT_LOAD);
}

/** The physical span [start, end) the PT_LOAD segments occupy. */
export function loadSpan(elf: Elf64, path: string): { start: number; end: number } {
  const segs = loadSegments(elf);
  if (segs.length === 0) throw new ElfError(path, 0, "no PT_LOAD segments");
  let start = Infinity;
  let end = 0;
  for (const s of segs) {
    const pa = paddrNumber(s, path);
    start = Math.min(start, pa);
    end = Math.max(end, pa + s.memsz);
  }
  return { start, end };
}

/**
 * The physical entry address: `e_entry` itself if a PT_LOAD segment's physical range holds it,
 * else `e_entry` translated through the segment whose virtual range holds it (which for vmlinux
 * is `e_entry - __START_KERNEL_map`).
 */
export function physicalEntry(elf: Elf64, path: string): bigint {
  const segs = loadSegments(elf);
  const inside = (a: bigint, base: bigint, s: ElfProgramHeader) =>
    a >= base && a < base + BigInt(s.memsz);
  if (segs.some((s) => inside(elf.entry, s.paddr, s))) return elf.entry;
  const seg = segs.find((s) => inside(elf.entry, s.vaddr, s));
  if (seg) {
    const phys = elf.entry - seg.vaddr + seg.paddr;
    // A kernel image must agree with __START_KERNEL_map; anything else is a link we do not know.
    if (elf.entry >= START_KERNEL_MAP && phys !== elf.entry - START_KERNEL_MAP) {
      throw new ElfError(
        path,
        seg.at,
        `entry 0x${elf.entry.toString(16)} maps to physical 0x${phys.toString(16)}, not ` +
          `e_entry - __START_KERNEL_map`,
      );
    }
    return phys;
  }
  throw new ElfError(path, 24, `e_entry 0x${elf.entry.toString(16)} is in no PT_LOAD segment`);
}

/**
 * Copies every PT_LOAD segment of `image` to `ram` at its `p_paddr`, zero-filling from
 * `p_filesz` to `p_memsz`; `limit` is the first byte the segments may not reach.
 */
export function loadElfSegments(
  ram: Uint8Array,
  image: Uint8Array,
  elf: Elf64,
  path: string,
  limit: number = ram.length,
): void {
  for (const s of loadSegments(elf)) {
    const pa = paddrNumber(s, path);
    if (pa + s.memsz > Math.min(limit, ram.length)) {
      throw new ElfError(
        path,
        s.at + 24,
        `segment at physical 0x${pa.toString(16)}+0x${s.memsz.toString(16)} ends beyond ` +
          `0x${Math.min(limit, ram.length).toString(16)}, the end of the memory it may use`,
      );
    }
    ram.set(image.subarray(s.offset, s.offset + s.filesz), pa);
    ram.fill(0, pa + s.filesz, pa + s.memsz);
  }
}

function paddrNumber(s: ElfProgramHeader, path: string): number {
  if (s.paddr > BigInt(Number.MAX_SAFE_INTEGER)) {
    throw new ElfError(path, s.at + 24, `p_paddr 0x${s.paddr.toString(16)} is not a RAM address`);
  }
  return Number(s.paddr);
}

function u64(dv: DataView, at: number, path: string): number {
  const v = dv.getBigUint64(at, true);
  if (v > BigInt(Number.MAX_SAFE_INTEGER)) {
    throw new ElfError(path, at, `value 0x${v.toString(16)} is too large`);
  }
  return Number(v);
}
