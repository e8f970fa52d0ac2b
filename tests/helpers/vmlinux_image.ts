/**
 * Synthetic vmlinux images for the boot_vmlinux_*_test.ts tests: deterministic bytes, a small LZ4
 * block encoder and legacy frames, and ELF64 executables shaped like a vmlinux.
 */
import { LZ4_LEGACY_BLOCK_MAX, LZ4_LEGACY_MAGIC } from "../../src/vmm/boot/lz4.ts";
import { PT_LOAD } from "../../src/vmm/boot/elf.ts";

/** Deterministic bytes (xorshift32), so failures reproduce. */
export function randomBytes(n: number, seed = 1): Uint8Array {
  const out = new Uint8Array(n);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < n; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    out[i] = x & 0xff;
  }
  return out;
}

/**
 * A small greedy LZ4 block encoder that follows the format's end rules (the last match starts at
 * least 12 bytes before the end, the last 5 bytes are literals), so its output is valid for any
 * LZ4 decoder and exercises long literal runs, long matches and overlapping matches.
 */
export function lz4CompressBlock(src: Uint8Array): Uint8Array {
  const out: number[] = [];
  const table = new Map<number, number>();
  const pushLen = (n: number) => {
    for (; n >= 255; n -= 255) out.push(255);
    out.push(n);
  };
  const emit = (litFrom: number, litTo: number, offset: number, matchLen: number) => {
    const lit = litTo - litFrom;
    const m = matchLen - 4;
    out.push((Math.min(lit, 15) << 4) | (matchLen ? Math.min(m, 15) : 0));
    if (lit >= 15) pushLen(lit - 15);
    for (let i = litFrom; i < litTo; i++) out.push(src[i]);
    if (!matchLen) return;
    out.push(offset & 0xff, offset >> 8);
    if (m >= 15) pushLen(m - 15);
  };
  let anchor = 0;
  let ip = 0;
  const matchLimit = src.length - 12;
  while (ip < matchLimit) {
    const key = src[ip] | (src[ip + 1] << 8) | (src[ip + 2] << 16) | (src[ip + 3] << 24);
    const cand = table.get(key);
    table.set(key, ip);
    if (cand === undefined || ip - cand > 65535) {
      ip++;
      continue;
    }
    let len = 4;
    while (ip + len < src.length - 5 && src[cand + len] === src[ip + len]) len++;
    emit(anchor, ip, ip - cand, len);
    ip += len;
    anchor = ip;
  }
  emit(anchor, src.length, 0, 0);
  return new Uint8Array(out);
}

/** A legacy frame of the given blocks, optionally with the kernel build's trailing size word. */
export function legacyFrame(blocks: Uint8Array[], sizeWord?: number): Uint8Array {
  const parts: number[] = [];
  const u32 = (v: number) => parts.push(v & 0xff, (v >>> 8) & 0xff, (v >>> 16) & 0xff, v >>> 24);
  u32(LZ4_LEGACY_MAGIC);
  for (const b of blocks) {
    u32(b.length);
    for (const x of b) parts.push(x);
  }
  if (sizeWord !== undefined) u32(sizeWord);
  return new Uint8Array(parts);
}

/** Legacy LZ4 as the kernel build writes it: 8 MiB blocks, then the uncompressed size. */
export function kernelLz4(data: Uint8Array): Uint8Array {
  const blocks = [];
  for (let at = 0; at < data.length; at += LZ4_LEGACY_BLOCK_MAX) {
    blocks.push(lz4CompressBlock(data.subarray(at, at + LZ4_LEGACY_BLOCK_MAX)));
  }
  return legacyFrame(blocks, data.length);
}

/** One program header of buildElf()'s ELF, with its file data. */
export interface TestSegment {
  type?: number;
  vaddr: bigint;
  paddr: bigint;
  data: Uint8Array;
  memsz: number;
}

/** An ELF64 x86-64 executable with the given segments; `o` breaks header fields on purpose. */
export function buildElf(
  entry: bigint,
  segs: TestSegment[],
  o: { cls?: number; data?: number; machine?: number; type?: number; phentsize?: number } = {},
): Uint8Array {
  const phoff = 64;
  let dataAt = phoff + segs.length * 56;
  const offsets = segs.map((s) => {
    dataAt = Math.ceil(dataAt / 16) * 16;
    const at = dataAt;
    dataAt += s.data.length;
    return at;
  });
  const img = new Uint8Array(dataAt);
  const dv = new DataView(img.buffer);
  img.set([0x7f, 0x45, 0x4c, 0x46, o.cls ?? 2, o.data ?? 1, 1]);
  dv.setUint16(16, o.type ?? 2, true);
  dv.setUint16(18, o.machine ?? 62, true);
  dv.setUint32(20, 1, true);
  dv.setBigUint64(24, entry, true);
  dv.setBigUint64(32, BigInt(phoff), true);
  dv.setUint16(52, 64, true);
  dv.setUint16(54, o.phentsize ?? 56, true);
  dv.setUint16(56, segs.length, true);
  segs.forEach((s, i) => {
    const at = phoff + i * 56;
    dv.setUint32(at, s.type ?? PT_LOAD, true);
    dv.setUint32(at + 4, 7, true);
    dv.setBigUint64(at + 8, BigInt(offsets[i]), true);
    dv.setBigUint64(at + 16, s.vaddr, true);
    dv.setBigUint64(at + 24, s.paddr, true);
    dv.setBigUint64(at + 32, BigInt(s.data.length), true);
    dv.setBigUint64(at + 40, BigInt(s.memsz), true);
    dv.setBigUint64(at + 48, 0x200000n, true);
    img.set(s.data, offsets[i]);
  });
  return img;
}

/** The kernel text mapping's base, where a vmlinux links its segments. */
export const KMAP = 0xffffffff80000000n;
/** fakeVmlinux()'s text segment. */
export const TEXT = randomBytes(3 * 4096 + 123, 7);
/** fakeVmlinux()'s data segment (and its note). */
export const DATA = randomBytes(2 * 4096, 8);

/** A vmlinux look-alike: text at 16 MiB, data with a BSS tail at 18 MiB, a note (not loaded). */
export function fakeVmlinux(entry = KMAP + 0x1000000n): Uint8Array {
  return buildElf(entry, [
    { vaddr: KMAP + 0x1000000n, paddr: 0x1000000n, data: TEXT, memsz: TEXT.length },
    { vaddr: KMAP + 0x1200000n, paddr: 0x1200000n, data: DATA, memsz: DATA.length + 5 * 4096 },
    { type: 4, vaddr: KMAP + 0x1300000n, paddr: 0x1300000n, data: DATA, memsz: DATA.length },
  ]);
}
