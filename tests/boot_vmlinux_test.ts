/**
 * Booting the kernel proper without its decompressor: LZ4 block and legacy-frame decoding (hand
 * vectors, a test encoder, the lz4 tool), gzip/zstd/lz4 payload extraction from a bzImage, the
 * installed Debian kernel's payload, ELF64 parsing and PT_LOAD placement, what loadLinux chooses
 * and writes on the ELF path, and every refusal with the file and offset it names.
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
import {
  ElfError,
  loadElfSegments,
  loadSegments,
  loadSpan,
  parseElf64,
  physicalEntry,
  PT_LOAD,
} from "../src/vmm/boot/elf.ts";
import { loadLinux, withNokaslr } from "../src/vmm/boot/linux.ts";
import {
  LZ4_LEGACY_BLOCK_MAX,
  LZ4_LEGACY_MAGIC,
  lz4DecompressBlock,
  lz4DecompressLegacy,
  Lz4Error,
} from "../src/vmm/boot/lz4.ts";
import { extractVmlinux, payloadFormat } from "../src/vmm/boot/vmlinux.ts";
import { findGuestKernel } from "../src/vmm/boot/initramfs.ts";

const MiB = 1024 * 1024;
const enc = new TextEncoder();
const realKernel = findGuestKernel();

// ---------------------------------------------------------------------------------------------
// helpers

/** Deterministic bytes (xorshift32), so failures reproduce. */
function randomBytes(n: number, seed = 1): Uint8Array {
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
function lz4CompressBlock(src: Uint8Array): Uint8Array {
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
function legacyFrame(blocks: Uint8Array[], sizeWord?: number): Uint8Array {
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
function kernelLz4(data: Uint8Array): Uint8Array {
  const blocks = [];
  for (let at = 0; at < data.length; at += LZ4_LEGACY_BLOCK_MAX) {
    blocks.push(lz4CompressBlock(data.subarray(at, at + LZ4_LEGACY_BLOCK_MAX)));
  }
  return legacyFrame(blocks, data.length);
}

/** `compressed` followed by the build's size word, `size` as a little-endian u32. */
function sizeAppended(compressed: Uint8Array, size: number): Uint8Array {
  const out = new Uint8Array(compressed.length + 4);
  out.set(compressed);
  new DataView(out.buffer).setUint32(compressed.length, size, true);
  return out;
}

interface TestSegment {
  type?: number;
  vaddr: bigint;
  paddr: bigint;
  data: Uint8Array;
  memsz: number;
}

/** An ELF64 x86-64 executable with the given segments; `o` breaks header fields on purpose. */
function buildElf(
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

const KMAP = 0xffffffff80000000n;
const TEXT = randomBytes(3 * 4096 + 123, 7);
const DATA = randomBytes(2 * 4096, 8);

/** A vmlinux look-alike: text at 16 MiB, data with a BSS tail at 18 MiB, a note (not loaded). */
function fakeVmlinux(entry = KMAP + 0x1000000n): Uint8Array {
  return buildElf(entry, [
    { vaddr: KMAP + 0x1000000n, paddr: 0x1000000n, data: TEXT, memsz: TEXT.length },
    { vaddr: KMAP + 0x1200000n, paddr: 0x1200000n, data: DATA, memsz: DATA.length + 5 * 4096 },
    { type: 4, vaddr: KMAP + 0x1300000n, paddr: 0x1300000n, data: DATA, memsz: DATA.length },
  ]);
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

function cString(ram: Uint8Array, at: number): string {
  return new TextDecoder().decode(ram.subarray(at, ram.indexOf(0, at)));
}

function find(hay: Uint8Array, needle: Uint8Array): number {
  outer: for (let i = hay.indexOf(needle[0]); i >= 0; i = hay.indexOf(needle[0], i + 1)) {
    for (let j = 1; j < needle.length; j++) if (hay[i + j] !== needle[j]) continue outer;
    return i;
  }
  return -1;
}

// ---------------------------------------------------------------------------------------------
// LZ4 blocks

Deno.test("lz4: hand-made blocks decode: literals only, long literal run, plain and overlapping matches", () => {
  const decode = (block: number[], max = 4096) => {
    const out = new Uint8Array(max);
    return out.subarray(0, lz4DecompressBlock(new Uint8Array(block), out, 0, max));
  };
  const text = (b: Uint8Array) => new TextDecoder().decode(b);
  // token 0x50: 5 literals, no match (the last sequence).
  assertEquals(text(decode([0x50, ...enc.encode("hello")])), "hello");
  // 300 literals: 15 in the token, then 255 + 30.
  const lit = randomBytes(300, 3);
  assertEquals(decode([0xf0, 255, 30, ...lit]), lit);
  // "abcdefgh" then a match at offset 8 of length 8 (token low nibble 4), then an empty last sequence.
  assertEquals(
    text(decode([0x84, ...enc.encode("abcdefgh"), 8, 0, 0x00])),
    "abcdefghabcdefgh",
  );
  // "a" then offset 1, length 15 + 0 + 4 = 19: a run that copies its own output.
  assertEquals(text(decode([0x1f, 0x61, 1, 0, 0, 0x00])), "a".repeat(20));
  // "xy" then offset 2, length 4 + 3 = 7: overlapping with a period of 2, then literals "z".
  assertEquals(text(decode([0x23, 0x78, 0x79, 2, 0, 0x10, 0x7a])), "xyxyxyxyxz");
  // Writing at an offset into a larger buffer: the match may not reach before dstStart.
  const big = new Uint8Array(64).fill(0xee);
  const end = lz4DecompressBlock(new Uint8Array([0x20, 1, 2]), big, 10, 64);
  assertEquals([end, big[9], big[10], big[11], big[12]], [12, 0xee, 1, 2, 0xee]);
});

Deno.test("lz4: the test encoder round-trips random, repetitive, zero and mixed data", () => {
  const cases: Array<[string, Uint8Array]> = [
    ["empty-ish", new Uint8Array([42])],
    ["random 64 KiB", randomBytes(64 * 1024, 11)],
    ["zeros 1 MiB", new Uint8Array(MiB)],
    ["text", enc.encode("the quick brown fox jumps over the lazy dog. ".repeat(5000))],
    [
      "mixed",
      (() => {
        const b = new Uint8Array(300_000);
        for (let i = 0; i < b.length; i += 1000) {
          b.set(i % 3000 === 0 ? randomBytes(1000, i + 1) : TEXT.subarray(0, 1000), i);
        }
        return b;
      })(),
    ],
  ];
  for (const [name, data] of cases) {
    const block = lz4CompressBlock(data);
    const out = new Uint8Array(data.length);
    const n = lz4DecompressBlock(block, out, 0, out.length, name);
    assertEquals(n, data.length, `${name}: length`);
    assert(out.every((x, i) => x === data[i]), `${name}: contents`);
    if (name.startsWith("zeros")) assert(block.length < 5000, `zeros compress (${block.length})`);
  }
});

Deno.test("lz4: the legacy frame joins independent blocks and checks the trailing size word", () => {
  const parts = [randomBytes(1000, 1), new Uint8Array(5000).fill(7), enc.encode("tail")];
  const whole = new Uint8Array(parts.reduce((a, p) => a + p.length, 0));
  parts.reduce((at, p) => (whole.set(p, at), at + p.length), 0);
  const blocks = parts.map(lz4CompressBlock);
  assertEquals(lz4DecompressLegacy(legacyFrame(blocks)), whole);
  assertEquals(lz4DecompressLegacy(legacyFrame(blocks, whole.length)), whole);
  // Concatenated streams (lz4 -l of several inputs) repeat the magic between blocks.
  const one = legacyFrame([blocks[0]]);
  const two = legacyFrame([blocks[1]]);
  const twice = new Uint8Array(one.length + two.length);
  twice.set(one);
  twice.set(two, one.length);
  assertEquals(lz4DecompressLegacy(twice), whole.subarray(0, 6000));
  // Two full 8 MiB blocks and a short one, as the kernel build writes them.
  const data = new Uint8Array(2 * LZ4_LEGACY_BLOCK_MAX + 12345);
  for (let i = 0; i < data.length; i += 4096) data[i] = i >>> 12;
  const frame = kernelLz4(data);
  const out = lz4DecompressLegacy(frame, "kernel-like");
  assertEquals(out.length, data.length);
  assert(out.every((x, i) => x === data[i]), "3-block frame contents");
});

Deno.test("lz4: output of the lz4 tool's legacy format (-l) decodes byte for byte", async () => {
  const lz4 = await new Deno.Command("sh", { args: ["-c", "command -v lz4"] }).output();
  if (!lz4.success) {
    console.log("skipped: the lz4 tool is not installed (apt-get install lz4)");
    return;
  }
  const data = new Uint8Array(9 * MiB + 777);
  for (let i = 0; i < data.length; i += 512) {
    const chunk = i % 4096 === 0 ? randomBytes(512, i + 5) : TEXT.subarray(0, 512);
    data.set(chunk.subarray(0, data.length - i), i);
  }
  for (const level of ["-1", "-9"]) {
    const p = new Deno.Command("lz4", {
      args: ["-l", level, "-c"],
      stdin: "piped",
      stdout: "piped",
    }).spawn();
    const w = p.stdin.getWriter();
    const done = p.output();
    await w.write(data);
    await w.close();
    const { stdout, success } = await done;
    assert(success, `lz4 -l ${level}`);
    const out = lz4DecompressLegacy(stdout, `lz4 ${level}`);
    assertEquals(out.length, data.length);
    assert(out.every((x, i) => x === data[i]), `lz4 ${level} contents`);
  }
});

Deno.test("lz4: bad input is refused with the file and the offset of the fault", () => {
  const bad = (input: number[] | Uint8Array, offset: number, text: string) => {
    const e = assertThrows(
      () => lz4DecompressLegacy(new Uint8Array(input), "/tmp/k.lz4"),
      Lz4Error,
      text,
    ) as Lz4Error;
    assertEquals([e.path, e.offset], ["/tmp/k.lz4", offset], e.message);
    assert(e.message.startsWith(`/tmp/k.lz4: LZ4 data at offset 0x${offset.toString(16)}: `));
  };
  const m = [0x02, 0x21, 0x4c, 0x18];
  bad([0x1f, 0x8b, 0, 0], 0, "no LZ4 legacy magic");
  bad([1, 2], 0, "no LZ4 legacy magic");
  bad([...m, 100, 0, 0, 0, 0x10, 0x41], 4, "block size 100 does not fit");
  bad([...m, 0, 0, 0, 0, 0x10, 0x41], 4, "block size 0");
  bad([...m, 2, 0, 0, 0, 0x10, 0x41, 9], 10, "1 stray bytes");
  // 5 literals announced, 2 present: the fault is at the block's 2nd byte (file offset 9).
  bad([...m, 3, 0, 0, 0, 0x50, 0x41, 0x42], 9, "literal run of 5 bytes");
  bad([...m, 4, 0, 0, 0, 0x14, 0x41, 0, 0], 10, "match offset 0");
  bad([...m, 4, 0, 0, 0, 0x14, 0x41, 2, 0], 10, "reaches before the block's output");
  bad([...m, 3, 0, 0, 0, 0x14, 0x41, 1], 10, "block ends inside a match offset");
  bad([...m, 2, 0, 0, 0, 0xf0, 255], 10, "block ends inside a length");
  // The second block may not refer back into the first: blocks are independent.
  const first = lz4CompressBlock(enc.encode("abcdabcdabcdabcdabcd"));
  const frame = legacyFrame([first, new Uint8Array([0x04, 4, 0, 0x00])]);
  bad(frame, 4 + 4 + first.length + 4 + 1, "reaches before the block's output");
  // A block that would decompress past 8 MiB: found once the match length is read, at 13 + len.
  const len = new Array(Math.ceil(LZ4_LEGACY_BLOCK_MAX / 255) + 1).fill(255);
  const huge = legacyFrame([new Uint8Array([0x1f, 0x41, 1, 0, ...len, 0, 0x00])]);
  bad(huge, 13 + len.length, "output exceeds 8388608 bytes");
  // A trailing size word that disagrees with the output.
  const ok = legacyFrame([lz4CompressBlock(enc.encode("hello world, hello"))], 999);
  bad(ok, ok.length - 4, "trailing size word says 999 bytes but the blocks decompress to 18");
});

// ---------------------------------------------------------------------------------------------
// ELF

Deno.test("elf: a vmlinux-like ELF parses; span, entry (virtual and physical) and PT_LOAD list", () => {
  const img = fakeVmlinux();
  const elf = parseElf64(img, "vmlinux");
  assertEquals(elf.phdrs.length, 3);
  assertEquals(loadSegments(elf).length, 2);
  assertEquals(loadSpan(elf, "vmlinux"), {
    start: 0x1000000,
    end: 0x1200000 + DATA.length + 5 * 4096,
  });
  assertEquals(physicalEntry(elf, "vmlinux"), 0x1000000n);
  assertEquals(physicalEntry(parseElf64(fakeVmlinux(KMAP + 0x1000123n), "v"), "v"), 0x1000123n);
  // vmlinux's own e_entry is already physical (phys_startup_64).
  assertEquals(physicalEntry(parseElf64(fakeVmlinux(0x1000040n), "v"), "v"), 0x1000040n);
});

Deno.test("elf: PT_LOAD segments land at p_paddr, BSS is zeroed, other segments are not loaded", () => {
  const img = fakeVmlinux();
  const elf = parseElf64(img, "vmlinux");
  const ram = new Uint8Array(32 * MiB).fill(0xee);
  loadElfSegments(ram, img, elf, "vmlinux");
  assertEquals(ram.subarray(0x1000000, 0x1000000 + TEXT.length), TEXT);
  assertEquals(ram[0x1000000 + TEXT.length], 0xee, "nothing beyond p_memsz of the text");
  assertEquals(ram.subarray(0x1200000, 0x1200000 + DATA.length), DATA);
  const bss = ram.subarray(0x1200000 + DATA.length, 0x1200000 + DATA.length + 5 * 4096);
  assert(bss.every((b) => b === 0), "p_memsz beyond p_filesz is zero-filled");
  assertEquals(ram[0x1200000 + DATA.length + 5 * 4096], 0xee);
  assert(ram.subarray(0x1300000, 0x1300000 + DATA.length).every((b) => b === 0xee), "PT_NOTE");
  assertEquals(ram[0xfffff], 0xee);
});

Deno.test("elf: bad headers and segments are refused with the file and offset", () => {
  const bad = (img: Uint8Array, offset: number, text: string, ram?: Uint8Array) => {
    const e = assertThrows(
      () => {
        const elf = parseElf64(img, "/x/vmlinux");
        if (ram) loadElfSegments(ram, img, elf, "/x/vmlinux", 17 * MiB);
        else physicalEntry(elf, "/x/vmlinux");
      },
      ElfError,
      text,
    ) as ElfError;
    assertEquals([e.path, e.offset], ["/x/vmlinux", offset], e.message);
    assert(e instanceof BootImageError, "an ElfError is a BootImageError");
    assert(e.message.startsWith(`/x/vmlinux: ELF at offset 0x${offset.toString(16)}: `));
  };
  const seg = (o: Partial<TestSegment> = {}) => ({
    vaddr: KMAP + 0x1000000n,
    paddr: 0x1000000n,
    data: TEXT,
    memsz: TEXT.length,
    ...o,
  });
  bad(new Uint8Array(10), 0, "too small");
  bad(new Uint8Array(64), 0, "no \\x7fELF magic");
  bad(buildElf(0n, [seg()], { cls: 1 }), 4, "not ELF64");
  bad(buildElf(0n, [seg()], { data: 2 }), 5, "not little-endian");
  bad(buildElf(0n, [seg()], { machine: 3 }), 18, "e_machine 3 is not x86-64");
  bad(buildElf(0n, [seg()], { type: 3 }), 16, "e_type 3 is not ET_EXEC");
  bad(buildElf(0n, [seg()], { phentsize: 32 }), 54, "e_phentsize 32");
  bad(buildElf(0n, []), 56, "no program headers");
  bad(buildElf(0n, [seg()]).subarray(0, 100), 32, "run past the file's 100 bytes");
  bad(buildElf(0n, [seg({ memsz: 10 })]), 64 + 32, `p_filesz ${TEXT.length} exceeds p_memsz 10`);
  const cut = buildElf(0n, [seg()]);
  bad(cut.subarray(0, cut.length - 1), 64 + 8, "segment bytes");
  bad(buildElf(KMAP + 0x5000000n, [seg()]), 24, "is in no PT_LOAD segment");
  bad(
    buildElf(KMAP + 0x1000010n, [seg({ paddr: 0x2000000n })]),
    64,
    "not e_entry - __START_KERNEL_map",
  );
  const big = seg({ memsz: 2 * MiB });
  bad(buildElf(0x1000000n, [big]), 64 + 24, "ends beyond 0x1100000", new Uint8Array(32 * MiB));
});

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
