/**
 * A small CBOR (RFC 8949) codec for state and control messages: integers, bigints (tags 2/3, so they
 * decode as bigints), floats, strings, byte strings, typed arrays (RFC 8746 tags), arrays, maps with
 * string keys, booleans and null. The decoder bounds every length by the bytes present, nesting by
 * MAX_DEPTH and bignums by MAX_BIGNUM_BYTES, so malformed or hostile input fails with CborError in
 * time linear in its size instead of allocating, recursing or computing without limit.
 */

/** Malformed CBOR input. */
export class CborError extends Error {
  constructor(message: string, readonly offset: number) {
    super(`${message} at byte ${offset}`);
    this.name = "CborError";
  }
}

const TYPED_TAGS = { u16: 69, u32: 70, u64: 71, f64: 86 } as const;
const MAX_DEPTH = 64;
/**
 * Longest bignum magnitude, in bytes, either way. dcres's bigints are 64-bit registers and counters
 * (8 bytes); 64 leaves room for wider values while a hostile bignum cannot cost an agent real work.
 */
export const MAX_BIGNUM_BYTES = 64;

/** Encodes a value. */
export function encodeCbor(value: unknown): Uint8Array<ArrayBuffer> {
  const w = new Writer();
  w.value(value, 0);
  return w.bytes();
}

/** Decodes one value that spans all of `buf`. */
export function decodeCbor(buf: Uint8Array): unknown {
  const r = new Reader(buf);
  const v = r.value(0);
  if (r.pos !== buf.length) throw new CborError(`${buf.length - r.pos} trailing bytes`, r.pos);
  return v;
}

class Writer {
  private buf = new Uint8Array(1024);
  private dv = new DataView(this.buf.buffer);
  private len = 0;

  bytes(): Uint8Array<ArrayBuffer> {
    return this.buf.slice(0, this.len);
  }

  private room(n: number) {
    if (this.len + n <= this.buf.length) return;
    const next = new Uint8Array(Math.max(this.buf.length * 2, this.len + n));
    next.set(this.buf.subarray(0, this.len));
    this.buf = next;
    this.dv = new DataView(next.buffer);
  }

  private head(major: number, n: number | bigint) {
    this.room(9);
    const m = major << 5;
    const v = BigInt(n);
    if (v < 24n) this.buf[this.len++] = m | Number(v);
    else if (v < 0x100n) {
      this.buf[this.len++] = m | 24;
      this.buf[this.len++] = Number(v);
    } else if (v < 0x10000n) {
      this.buf[this.len++] = m | 25;
      this.dv.setUint16(this.len, Number(v));
      this.len += 2;
    } else if (v < 0x100000000n) {
      this.buf[this.len++] = m | 26;
      this.dv.setUint32(this.len, Number(v));
      this.len += 4;
    } else {
      this.buf[this.len++] = m | 27;
      this.dv.setBigUint64(this.len, v);
      this.len += 8;
    }
  }

  private raw(b: Uint8Array) {
    this.room(b.length);
    this.buf.set(b, this.len);
    this.len += b.length;
  }

  private typed(tag: number, view: ArrayBufferView, depth: number) {
    if (depth + 1 > MAX_DEPTH) throw new CborError("nesting too deep to encode", this.len);
    this.head(6, tag);
    const b = new Uint8Array(view.buffer, view.byteOffset, view.byteLength);
    this.head(2, b.length);
    this.raw(b);
  }

  value(v: unknown, depth: number): void {
    if (depth > MAX_DEPTH) throw new CborError("nesting too deep to encode", this.len);
    if (v === null) return this.raw(Uint8Array.of(0xf6));
    if (v === undefined) return this.raw(Uint8Array.of(0xf7));
    if (v === true || v === false) return this.raw(Uint8Array.of(v ? 0xf5 : 0xf4));
    if (typeof v === "number") {
      if (Number.isSafeInteger(v) && !Object.is(v, -0)) {
        return v >= 0 ? this.head(0, v) : this.head(1, -1 - v);
      }
      this.room(9);
      this.buf[this.len++] = 0xfb;
      this.dv.setFloat64(this.len, v);
      this.len += 8;
      return;
    }
    if (typeof v === "bigint") {
      if (depth + 1 > MAX_DEPTH) throw new CborError("nesting too deep to encode", this.len);
      const neg = v < 0n;
      let mag = neg ? -1n - v : v;
      const hex = mag ? mag.toString(16) : "";
      const n = Math.ceil(hex.length / 2);
      // Refused here too, so no writer produces a file or message its own reader refuses.
      if (n > MAX_BIGNUM_BYTES) {
        throw new CborError(
          `bignum of ${n} bytes exceeds the ${MAX_BIGNUM_BYTES}-byte limit`,
          this.len,
        );
      }
      const bytes = new Uint8Array(n);
      for (let i = n - 1; i >= 0; i--, mag >>= 8n) bytes[i] = Number(mag & 0xffn);
      this.head(6, neg ? 3 : 2);
      this.head(2, n);
      return this.raw(bytes);
    }
    if (typeof v === "string") {
      const b = new TextEncoder().encode(v);
      this.head(3, b.length);
      return this.raw(b);
    }
    if (v instanceof Uint8Array) {
      this.head(2, v.length);
      return this.raw(v);
    }
    if (v instanceof Uint16Array) return this.typed(TYPED_TAGS.u16, v, depth);
    if (v instanceof Uint32Array) return this.typed(TYPED_TAGS.u32, v, depth);
    if (v instanceof BigUint64Array) return this.typed(TYPED_TAGS.u64, v, depth);
    if (v instanceof Float64Array) return this.typed(TYPED_TAGS.f64, v, depth);
    if (Array.isArray(v)) {
      this.head(4, v.length);
      for (const x of v) this.value(x, depth + 1);
      return;
    }
    if (typeof v === "object") {
      const entries = Object.entries(v as Record<string, unknown>).filter(([, x]) =>
        x !== undefined
      );
      this.head(5, entries.length);
      for (const [k, x] of entries) {
        this.value(k, depth + 1);
        this.value(x, depth + 1);
      }
      return;
    }
    throw new CborError(`cannot encode a ${typeof v}`, this.len);
  }
}

class Reader {
  pos = 0;
  private readonly dv: DataView;
  constructor(private readonly buf: Uint8Array) {
    this.dv = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  }

  private need(n: number) {
    if (this.pos + n > this.buf.length) {
      throw new CborError(`truncated: need ${n} more bytes`, this.pos);
    }
  }

  private arg(info: number): number | bigint {
    if (info < 24) return info;
    const sizes: Record<number, number> = { 24: 1, 25: 2, 26: 4, 27: 8 };
    const n = sizes[info];
    if (!n) throw new CborError(`unsupported additional info ${info}`, this.pos - 1);
    this.need(n);
    const at = this.pos;
    this.pos += n;
    if (n === 1) return this.dv.getUint8(at);
    if (n === 2) return this.dv.getUint16(at);
    if (n === 4) return this.dv.getUint32(at);
    const big = this.dv.getBigUint64(at);
    return big <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(big) : big;
  }

  private length(info: number): number {
    const n = this.arg(info);
    if (typeof n === "bigint" || n > this.buf.length - this.pos) {
      throw new CborError(
        `length ${n} exceeds the ${this.buf.length - this.pos} bytes left`,
        this.pos,
      );
    }
    return n;
  }

  /** Refuses a bignum longer than MAX_BIGNUM_BYTES from its head, before its bytes are read. */
  private checkBignumHead() {
    this.need(1);
    const ib = this.buf[this.pos];
    if (ib >> 5 !== 2) return; // not a byte string: tagged() names the flaw
    const at = this.pos++;
    const n = this.length(ib & 31);
    this.pos = at;
    if (n > MAX_BIGNUM_BYTES) {
      throw new CborError(`bignum of ${n} bytes exceeds the ${MAX_BIGNUM_BYTES}-byte limit`, at);
    }
  }

  private bytes(n: number): Uint8Array {
    this.need(n);
    const b = this.buf.slice(this.pos, this.pos + n);
    this.pos += n;
    return b;
  }

  value(depth: number): unknown {
    if (depth > MAX_DEPTH) throw new CborError("nesting too deep", this.pos);
    this.need(1);
    const start = this.pos;
    const ib = this.buf[this.pos++];
    const major = ib >> 5, info = ib & 31;
    switch (major) {
      case 0:
        return this.arg(info);
      case 1: {
        const n = this.arg(info);
        return typeof n === "bigint" ? -1n - n : -1 - n;
      }
      case 2:
        return this.bytes(this.length(info));
      case 3: {
        const b = this.bytes(this.length(info));
        try {
          return new TextDecoder("utf-8", { fatal: true }).decode(b);
        } catch {
          throw new CborError("text string is not valid UTF-8", start);
        }
      }
      case 4: {
        const n = this.length(info);
        const out = new Array(n);
        for (let i = 0; i < n; i++) out[i] = this.value(depth + 1);
        return out;
      }
      case 5: {
        const n = this.length(info);
        // A key and a value take a byte each at least.
        if (n * 2 > this.buf.length - this.pos) {
          throw new CborError(
            `map of ${n} entries exceeds the ${this.buf.length - this.pos} bytes left`,
            this.pos,
          );
        }
        const out: Record<string, unknown> = {};
        for (let i = 0; i < n; i++) {
          const k = this.value(depth + 1);
          if (typeof k !== "string") throw new CborError("map key is not a string", this.pos);
          if (k === "__proto__") throw new CborError("forbidden map key", this.pos);
          out[k] = this.value(depth + 1);
        }
        return out;
      }
      case 6:
        return this.tagged(Number(this.arg(info)), depth, start);
      case 7:
        if (info === 20) return false;
        if (info === 21) return true;
        if (info === 22) return null;
        if (info === 23) return undefined;
        if (info === 27) {
          this.need(8);
          const f = this.dv.getFloat64(this.pos);
          this.pos += 8;
          return f;
        }
    }
    throw new CborError(`unsupported item 0x${ib.toString(16)}`, start);
  }

  private tagged(tag: number, depth: number, start: number): unknown {
    if (tag === 2 || tag === 3) this.checkBignumHead();
    const inner = this.value(depth + 1);
    if (!(inner instanceof Uint8Array)) {
      throw new CborError(`tag ${tag} needs a byte string`, start);
    }
    const copy = () => inner.buffer.slice(inner.byteOffset, inner.byteOffset + inner.byteLength);
    const aligned = (size: number) => {
      if (inner.length % size) {
        throw new CborError(`tag ${tag} payload is not a multiple of ${size}`, start);
      }
      return copy();
    };
    switch (tag) {
      case 2:
      case 3: {
        // One hex parse is linear; shifting in byte by byte was quadratic in the bignum's length.
        let hex = "0x0";
        for (const b of inner) hex += b.toString(16).padStart(2, "0");
        const v = BigInt(hex);
        return tag === 2 ? v : -1n - v;
      }
      case TYPED_TAGS.u16:
        return new Uint16Array(aligned(2));
      case TYPED_TAGS.u32:
        return new Uint32Array(aligned(4));
      case TYPED_TAGS.u64:
        return new BigUint64Array(aligned(8));
      case TYPED_TAGS.f64:
        return new Float64Array(aligned(8));
    }
    throw new CborError(`unsupported tag ${tag}`, start);
  }
}
