/**
 * Framing of the agents' byte streams (QUIC streams, the local unix socket): every message is a frame
 * with an 8-byte header (magic, version, kind, payload length) and a bounded payload. Control messages
 * are CBOR; page data travels as binary frames. The decoder is incremental and never trusts a length
 * before checking it against the limit, so malformed, oversized or truncated input is an error, not
 * an allocation or a hang.
 */
import { encodeCbor } from "../codec/cbor.ts";

/** "DR" */
export const FRAME_MAGIC = 0x4452;
/** Frame format version this build speaks. */
export const FRAME_VERSION = 1;
/** Bytes of a frame header. */
export const FRAME_HEADER = 8;
/** Default payload limit of control frames. */
export const MAX_CONTROL_PAYLOAD = 1 << 20;

/** What a frame carries. */
export const FrameKind = { CONTROL: 1, DATA: 2 } as const;
/** A frame kind. */
export type FrameKind = typeof FrameKind[keyof typeof FrameKind];

/** One decoded frame. */
export interface Frame {
  /** Control (CBOR) or data (bytes). */
  kind: FrameKind;
  /** Payload bytes. */
  payload: Uint8Array;
}

/** Why a stream of frames is unusable; the stream must be closed after one of these. */
export class FrameError extends Error {
  constructor(
    /** Machine-readable reason. */
    readonly code: "bad-magic" | "unsupported-version" | "bad-kind" | "too-large" | "truncated",
    message: string,
  ) {
    super(message);
    this.name = "FrameError";
  }
}

/** Encodes one frame. */
export function encodeFrame(kind: FrameKind, payload: Uint8Array): Uint8Array<ArrayBuffer> {
  const out = new Uint8Array(FRAME_HEADER + payload.length);
  const dv = new DataView(out.buffer);
  dv.setUint16(0, FRAME_MAGIC);
  dv.setUint8(2, FRAME_VERSION);
  dv.setUint8(3, kind);
  dv.setUint32(4, payload.length);
  out.set(payload, FRAME_HEADER);
  return out;
}

/** Encodes a control message as a CBOR frame. */
export function encodeControl(message: unknown): Uint8Array<ArrayBuffer> {
  return encodeFrame(FrameKind.CONTROL, encodeCbor(message));
}

/** The payload of every empty frame: it has no bytes to change, so one serves all. */
const EMPTY = new Uint8Array(0);

/** Incremental frame decoder for one stream. */
export class FrameDecoder {
  /** Received bytes not yet decoded, as chunks (joined only when a frame is complete). */
  private chunks: Uint8Array[] = [];
  /** Bytes of chunks[0] already decoded: read by offset, so a frame costs no subarray of it. */
  private off = 0;
  private buffered = 0;
  /** Header of the frame being received, once its 8 bytes are in. */
  private want?: { kind: FrameKind; len: number };

  constructor(
    /** Largest payload accepted, per kind. */
    private readonly limits: Record<FrameKind, number> = {
      [FrameKind.CONTROL]: MAX_CONTROL_PAYLOAD,
      [FrameKind.DATA]: 64 << 20,
    },
  ) {}

  /** Takes `n` buffered bytes off the front, as one array. */
  private take(n: number): Uint8Array {
    const first = this.chunks[0];
    let out: Uint8Array;
    if (first.length - this.off >= n) {
      out = first.subarray(this.off, this.off + n);
      this.off += n;
    } else {
      out = new Uint8Array(n);
      for (let o = 0; o < n;) {
        const c = this.chunks[0];
        const k = Math.min(c.length - this.off, n - o);
        out.set(c.subarray(this.off, this.off + k), o);
        o += k;
        this.off += k;
        if (this.off === c.length) this.#next();
      }
    }
    if (this.chunks.length && this.off === this.chunks[0].length) this.#next();
    this.buffered -= n;
    return out;
  }

  /** Drops `n` bytes of chunks[0], all there. */
  private skip(n: number) {
    this.off += n;
    this.buffered -= n;
    if (this.off === this.chunks[0].length) this.#next();
  }

  #next() {
    this.chunks.shift();
    this.off = 0;
  }

  /** Adds received bytes; returns every frame completed by them. Throws FrameError on bad input. */
  push(bytes: Uint8Array): Frame[] {
    if (bytes.length) {
      this.chunks.push(bytes);
      this.buffered += bytes.length;
    }
    const frames: Frame[] = [];
    for (;;) {
      if (!this.want) {
        if (this.buffered < FRAME_HEADER) break;
        // Read in place when whole in one chunk: an array per header was most of a tiny frame's cost.
        const c = this.chunks[0];
        const inPlace = c.length - this.off >= FRAME_HEADER;
        const h = inPlace ? c : this.take(FRAME_HEADER);
        const at = inPlace ? this.off : 0;
        if (inPlace) this.skip(FRAME_HEADER);
        if (((h[at] << 8) | h[at + 1]) !== FRAME_MAGIC) {
          throw new FrameError("bad-magic", "not a dcres frame (wrong magic)");
        }
        const version = h[at + 2];
        if (version !== FRAME_VERSION) {
          throw new FrameError(
            "unsupported-version",
            `frame version ${version} is not supported (this agent speaks ${FRAME_VERSION})`,
          );
        }
        const kind = h[at + 3] as FrameKind;
        const limit = this.limits[kind];
        if (limit === undefined) throw new FrameError("bad-kind", `unknown frame kind ${kind}`);
        const len = ((h[at + 4] << 24) | (h[at + 5] << 16) | (h[at + 6] << 8) | h[at + 7]) >>> 0;
        if (len > limit) {
          throw new FrameError(
            "too-large",
            `frame of ${len} bytes exceeds the ${limit}-byte limit`,
          );
        }
        this.want = { kind, len };
      }
      if (this.buffered < this.want.len) break;
      const payload = this.want.len ? this.take(this.want.len) : EMPTY;
      frames.push({ kind: this.want.kind, payload });
      this.want = undefined;
    }
    return frames;
  }

  /** Call at end of stream: throws if a frame was cut off. */
  end(): void {
    if (this.buffered || this.want) {
      throw new FrameError(
        "truncated",
        `stream ended inside a frame (${this.buffered} bytes pending)`,
      );
    }
  }
}
