/**
 * LZ4 block decompression and the "legacy" frame format the kernel's build uses for
 * CONFIG_KERNEL_LZ4 (`lz4 -l`): magic 0x184C2102, then blocks each prefixed by a 32-bit
 * little-endian compressed size, each decompressing to at most 8 MiB on its own (no references
 * into earlier blocks). Written here because under PVM the guest's own decompressor takes minutes.
 */

/** Bad LZ4 input; names the file and the byte offset in it where decoding failed. */
export class Lz4Error extends Error {
  /** The file (or input) at fault. */
  readonly path: string;
  /** Byte offset in the input where the problem was found. */
  readonly offset: number;
  /** What is wrong, without the path and offset. */
  readonly reason: string;

  /** `reason` says what is wrong; the message prefixes it with `path` and `offset`. */
  constructor(path: string, offset: number, reason: string) {
    super(`${path}: LZ4 data at offset 0x${offset.toString(16)}: ${reason}`);
    this.name = "Lz4Error";
    this.path = path;
    this.offset = offset;
    this.reason = reason;
  }
}

/** The legacy frame's magic number, read as a little-endian u32. */
export const LZ4_LEGACY_MAGIC = 0x184c2102;
/** The most one legacy block decompresses to. */
export const LZ4_LEGACY_BLOCK_MAX = 8 * 1024 * 1024;

// The LZ4 block format: a match is at least 4 bytes, its offset at least 1 and 2 bytes wide.
const MIN_MATCH = 4;
const RUN_MASK = 15;

/**
 * Decompresses one LZ4 block `src` into `dst` starting at `dstStart`, writing at most up to
 * `dstEnd`; matches may only reach back to `dstStart`. Returns the end of the written output.
 * `at` is `src`'s offset in the file, for errors.
 */
export function lz4DecompressBlock(
  src: Uint8Array,
  dst: Uint8Array,
  dstStart: number,
  dstEnd: number,
  path = "lz4",
  at = 0,
): number {
  let ip = 0;
  let op = dstStart;
  const iend = src.length;
  const fail = (why: string): never => {
    throw new Lz4Error(path, at + ip, why);
  };
  if (iend === 0) fail("empty block");
  for (;;) {
    const token = src[ip++];
    let litLen = token >>> 4;
    if (litLen === RUN_MASK) litLen += readLength();
    if (ip + litLen > iend) fail(`literal run of ${litLen} bytes runs past the block's end`);
    if (op + litLen > dstEnd) fail(`output exceeds ${dstEnd - dstStart} bytes`);
    dst.set(src.subarray(ip, ip + litLen), op);
    ip += litLen;
    op += litLen;
    // The last sequence has literals only; the block ends right after them.
    if (ip === iend) return op;
    if (ip + 2 > iend) fail("block ends inside a match offset");
    const offset = src[ip] | (src[ip + 1] << 8);
    if (offset === 0) fail("match offset 0");
    if (offset > op - dstStart) {
      fail(`match offset ${offset} reaches before the block's output (${op - dstStart} bytes)`);
    }
    ip += 2;
    let matchLen = token & RUN_MASK;
    if (matchLen === RUN_MASK) matchLen += readLength();
    matchLen += MIN_MATCH;
    if (op + matchLen > dstEnd) fail(`output exceeds ${dstEnd - dstStart} bytes`);
    let from = op - offset;
    if (offset >= matchLen) {
      dst.copyWithin(op, from, from + matchLen);
      op += matchLen;
    } else {
      // Overlapping copy: the match repeats its own output, so it must go byte by byte.
      const end = op + matchLen;
      while (op < end) dst[op++] = dst[from++];
    }
  }

  // Extra length bytes: each 255 adds 255 and continues, anything else adds itself and stops.
  function readLength(): number {
    let n = 0;
    for (;;) {
      if (ip >= iend) fail("block ends inside a length");
      const b = src[ip++];
      n += b;
      if (b !== 255) return n;
    }
  }
}

/**
 * Decompresses a legacy-format LZ4 stream. A trailing 4-byte word that cannot be a block (the
 * kernel build appends the uncompressed size there) is checked against the output length when
 * it is exactly the last 4 bytes.
 */
export function lz4DecompressLegacy(input: Uint8Array, path = "lz4"): Uint8Array {
  const dv = new DataView(input.buffer, input.byteOffset, input.byteLength);
  if (input.length < 4 || dv.getUint32(0, true) !== LZ4_LEGACY_MAGIC) {
    throw new Lz4Error(path, 0, "no LZ4 legacy magic 0x184c2102");
  }
  // First pass: find the blocks, so the output is allocated once.
  const blocks: Array<{ at: number; size: number }> = [];
  let trailer: number | undefined;
  let pos = 4;
  while (pos < input.length) {
    if (input.length - pos < 4) {
      throw new Lz4Error(path, pos, `${input.length - pos} stray bytes where a block size belongs`);
    }
    const size = dv.getUint32(pos, true);
    if (size === LZ4_LEGACY_MAGIC) {
      // Concatenated streams (lz4 -l of several files) repeat the magic; it just continues.
      pos += 4;
      continue;
    }
    if (input.length - pos === 4) {
      trailer = size;
      break;
    }
    if (size === 0 || pos + 4 + size > input.length) {
      throw new Lz4Error(
        path,
        pos,
        `block size ${size} does not fit in the ${input.length - pos - 4} bytes left`,
      );
    }
    blocks.push({ at: pos + 4, size });
    pos += 4 + size;
  }
  const out = new Uint8Array(blocks.length * LZ4_LEGACY_BLOCK_MAX);
  let op = 0;
  for (const b of blocks) {
    op = lz4DecompressBlock(
      input.subarray(b.at, b.at + b.size),
      out,
      op,
      op + LZ4_LEGACY_BLOCK_MAX,
      path,
      b.at,
    );
  }
  if (trailer !== undefined && trailer !== op % 2 ** 32) {
    throw new Lz4Error(
      path,
      input.length - 4,
      `trailing size word says ${trailer} bytes but the blocks decompress to ${op}`,
    );
  }
  return out.subarray(0, op);
}
