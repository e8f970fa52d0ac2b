/**
 * Decoding a kernel proper without its decompressor: LZ4 block and legacy-frame decoding (hand
 * vectors, a test encoder, the lz4 tool), ELF64 parsing and PT_LOAD placement, and every refusal
 * with the file and offset it names. Extraction and loading: boot_vmlinux_test.ts.
 */
import { assert, assertEquals, assertThrows } from "./helpers/assert.ts";
import { BootImageError } from "../src/vmm/boot/bzimage.ts";
import {
  ElfError,
  loadElfSegments,
  loadSegments,
  loadSpan,
  parseElf64,
  physicalEntry,
} from "../src/vmm/boot/elf.ts";
import {
  LZ4_LEGACY_BLOCK_MAX,
  lz4DecompressBlock,
  lz4DecompressLegacy,
  Lz4Error,
} from "../src/vmm/boot/lz4.ts";
import { MiB } from "./helpers/boot_image.ts";
import {
  buildElf,
  DATA,
  fakeVmlinux,
  kernelLz4,
  KMAP,
  legacyFrame,
  lz4CompressBlock,
  randomBytes,
  type TestSegment,
  TEXT,
} from "./helpers/vmlinux_image.ts";

const enc = new TextEncoder();

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
