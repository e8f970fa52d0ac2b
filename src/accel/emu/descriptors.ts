/**
 * x86 segment descriptors as the emulated CPU needs them: Unicorn reports only a segment
 * register's selector, so the cached descriptor a saved state carries is read back from the GDT,
 * and system-register attributes are converted from QEMU's flag word.
 */
import type { Segment } from "../cpu_state.ts";

/** A segment register holding no usable segment. */
export function unusableSegment(selector = 0): Segment {
  return {
    base: 0n,
    limit: 0,
    selector,
    type: 0,
    present: 0,
    dpl: 0,
    db: 0,
    s: 0,
    l: 0,
    g: 0,
    avl: 0,
    unusable: 1,
  };
}

/**
 * The descriptor `selector` names in the GDT at `gdtBase`/`gdtLimit`, read through `read` (guest
 * physical bytes). System descriptors (s = 0) are 16 bytes in long mode, with base bits 32-63.
 */
export function segmentFromGdt(
  selector: number,
  gdtBase: bigint,
  gdtLimit: number,
  read: (addr: bigint, len: number) => Uint8Array,
): Segment {
  const index = selector >> 3;
  if (index === 0 || selector & 4 || index * 8 + 7 > gdtLimit) return unusableSegment(selector);
  const d = read(gdtBase + BigInt(index * 8), 16);
  const access = d[5], flags = d[6];
  const s = (access >> 4) & 1;
  let base = BigInt(d[2] | (d[3] << 8) | (d[4] << 16)) | (BigInt(d[7]) << 24n);
  if (s === 0 && index * 8 + 15 <= gdtLimit) {
    base |= BigInt(new DataView(d.buffer, d.byteOffset).getUint32(8, true)) << 32n;
  }
  const g = (flags >> 7) & 1;
  const rawLimit = d[0] | (d[1] << 8) | ((flags & 0xf) << 16);
  return {
    base,
    limit: g ? ((rawLimit << 12) | 0xfff) >>> 0 : rawLimit,
    selector,
    type: access & 0xf,
    present: (access >> 7) & 1,
    dpl: (access >> 5) & 3,
    db: (flags >> 6) & 1,
    s,
    l: (flags >> 5) & 1,
    g,
    avl: (flags >> 4) & 1,
    unusable: (access >> 7) & 1 ? 0 : 1,
  };
}

/** QEMU's segment flag word (descriptor bits 32-63 in place) for a segment. */
export function segmentFlags(s: Segment): number {
  return ((s.type & 0xf) << 8) | (s.s << 12) | ((s.dpl & 3) << 13) | (s.present << 15) |
    (s.avl << 20) | (s.l << 21) | (s.db << 22) | (s.g << 23);
}

/** A segment from a system register's selector, base, limit and QEMU flag word. */
export function segmentFromFlags(
  selector: number,
  base: bigint,
  limit: number,
  flags: number,
): Segment {
  const present = (flags >> 15) & 1;
  return {
    base,
    limit: limit >>> 0,
    selector,
    type: (flags >> 8) & 0xf,
    present,
    dpl: (flags >> 13) & 3,
    db: (flags >> 22) & 1,
    s: (flags >> 12) & 1,
    l: (flags >> 21) & 1,
    g: (flags >> 23) & 1,
    avl: (flags >> 20) & 1,
    unusable: present ? 0 : 1,
  };
}
