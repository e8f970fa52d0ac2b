/**
 * Declarative C struct codecs: a struct is a list of typed fields laid out with the C ABI's
 * alignment rules, so offsets and sizes are derived, never hand-computed.
 */

/** A codec for one C type at a given offset of a DataView. */
export interface Codec<T> {
  /** sizeof the C type. */
  readonly size: number;
  /** alignof the C type. */
  readonly align: number;
  /** Writes `value` at `off`. */
  write(dv: DataView, off: number, value: T): void;
  /** Reads the value at `off`. */
  read(dv: DataView, off: number): T;
  /** The all-zero value. */
  zero(): T;
}

function prim<T>(
  size: number,
  read: (dv: DataView, off: number) => T,
  write: (dv: DataView, off: number, v: T) => void,
  zero: T,
): Codec<T> {
  return { size, align: size, read, write, zero: () => zero };
}

/** `__u8`. */
export const u8: Codec<number> = prim(1, (d, o) => d.getUint8(o), (d, o, v) => d.setUint8(o, v), 0);
/** `__u16`. */
export const u16: Codec<number> = prim(
  2,
  (d, o) => d.getUint16(o, true),
  (d, o, v) => d.setUint16(o, v, true),
  0,
);
/** `__u32`. */
export const u32: Codec<number> = prim(
  4,
  (d, o) => d.getUint32(o, true),
  (d, o, v) => d.setUint32(o, v, true),
  0,
);
/** `__s32`. */
export const i32: Codec<number> = prim(
  4,
  (d, o) => d.getInt32(o, true),
  (d, o, v) => d.setInt32(o, v, true),
  0,
);
/** `__u64`. */
export const u64: Codec<bigint> = prim(
  8,
  (d, o) => d.getBigUint64(o, true),
  (d, o, v) => d.setBigUint64(o, BigInt.asUintN(64, v), true),
  0n,
);
/** `__s64`. */
export const i64: Codec<bigint> = prim(
  8,
  (d, o) => d.getBigInt64(o, true),
  (d, o, v) => d.setBigInt64(o, BigInt.asIntN(64, v), true),
  0n,
);

/** Reserved bytes: written as zero, not decoded. */
export function pad(size: number, align = 1): Codec<undefined> {
  return {
    size,
    align,
    read: () => undefined,
    write: (dv, off) => {
      for (let i = 0; i < size; i++) dv.setUint8(off + i, 0);
    },
    zero: () => undefined,
  };
}

/** An opaque byte array, e.g. `__u8 regs[1024]`. */
export function bytes(size: number, align = 1): Codec<Uint8Array> {
  return {
    size,
    align,
    read: (dv, off) =>
      new Uint8Array(dv.buffer.slice(dv.byteOffset + off, dv.byteOffset + off + size)),
    write: (dv, off, v) => {
      if (v.length !== size) throw new RangeError(`expected ${size} bytes, got ${v.length}`);
      new Uint8Array(dv.buffer, dv.byteOffset + off, size).set(v);
    },
    zero: () => new Uint8Array(size),
  };
}

/** A fixed-length array `T x[n]`. */
export function array<T>(elem: Codec<T>, length: number): Codec<T[]> {
  return {
    size: elem.size * length,
    align: elem.align,
    read: (dv, off) => Array.from({ length }, (_, i) => elem.read(dv, off + i * elem.size)),
    write: (dv, off, v) => {
      if (v.length !== length) throw new RangeError(`expected ${length} elements, got ${v.length}`);
      v.forEach((x, i) => elem.write(dv, off + i * elem.size, x));
    },
    zero: () => Array.from({ length }, () => elem.zero()),
  };
}

type FieldsOf<F> = {
  [K in keyof F as F[K] extends Codec<undefined> ? never : K]: F[K] extends Codec<infer T> ? T
    : never;
};

/** A struct codec with derived offsets and whole-buffer encode/decode. */
export interface StructCodec<T> extends Codec<T> {
  /** The C name, for messages and the kernel size check. */
  readonly cname: string;
  /** Byte offset of each field. */
  readonly offsets: Readonly<Record<string, number>>;
  /** Encodes into a fresh buffer of `size` bytes. */
  encode(value: T): Uint8Array<ArrayBuffer>;
  /** Decodes from the start of `buf`. */
  decode(buf: Uint8Array): T;
}

const align = (n: number, a: number) => Math.ceil(n / a) * a;

/** Defines a C struct from its fields in declaration order. */
export function struct<F extends Record<string, Codec<unknown>>>(
  cname: string,
  fields: F,
): StructCodec<FieldsOf<F>> {
  const offsets: Record<string, number> = {};
  let off = 0;
  let maxAlign = 1;
  for (const [name, c] of Object.entries(fields)) {
    off = align(off, c.align);
    offsets[name] = off;
    off += c.size;
    maxAlign = Math.max(maxAlign, c.align);
  }
  const size = align(off, maxAlign);
  const entries = Object.entries(fields);
  const codec: StructCodec<FieldsOf<F>> = {
    cname,
    size,
    align: maxAlign,
    offsets,
    read(dv, base) {
      const out: Record<string, unknown> = {};
      for (const [name, c] of entries) {
        const v = c.read(dv, base + offsets[name]);
        if (v !== undefined) out[name] = v;
      }
      return out as FieldsOf<F>;
    },
    write(dv, base, value) {
      const v = value as Record<string, unknown>;
      for (const [name, c] of entries) c.write(dv, base + offsets[name], v[name]);
    },
    zero() {
      const out: Record<string, unknown> = {};
      for (const [name, c] of entries) {
        const z = c.zero();
        if (z !== undefined) out[name] = z;
      }
      return out as FieldsOf<F>;
    },
    encode(value) {
      const buf = new Uint8Array(size);
      codec.write(new DataView(buf.buffer), 0, value);
      return buf;
    },
    decode(buf) {
      if (buf.length < size) {
        throw new RangeError(`${cname}: need ${size} bytes, got ${buf.length}`);
      }
      return codec.read(new DataView(buf.buffer, buf.byteOffset, buf.byteLength), 0);
    },
  };
  return codec;
}

/** The decoded type of a codec. */
export type Decoded<C> = C extends Codec<infer T> ? T : never;
