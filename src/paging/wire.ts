/**
 * Messages of a page channel (DATA frames of one long-lived `pages.channel` RPC): main asks a
 * sub-host for pages (GET), hands it pages (PUT), and tells it which pages it no longer holds
 * (RELEASE). Every request gets one reply with the same sequence number, in order. Layout, all
 * little-endian: a 16-byte header (op u8, status u8, reserved u16, seq u32, count u32, extra u32),
 * then `count` u32 gfns (requests), then `count` pages (PUT requests and GET replies), or an error
 * message of `extra` bytes (replies with status 1).
 */
import { PAGE_SIZE } from "../accel/accel.ts";

/** Operations. */
export const PageOp = { GET: 1, PUT: 2, RELEASE: 3 } as const;
/** An operation. */
export type PageOp = typeof PageOp[keyof typeof PageOp];

const HEADER = 16;
/** Most pages in one message (4 MiB of data). */
export const MAX_BATCH = 1024;

/** A decoded request. */
export interface PageRequest {
  /** What to do. */
  op: PageOp;
  /** Sequence number, echoed in the reply. */
  seq: number;
  /** Pages concerned. */
  gfns: Uint32Array;
  /** PUT: the pages, `gfns.length * 4096` bytes. */
  data?: Uint8Array;
}

/** A decoded reply. */
export interface PageReply {
  /** The request's operation. */
  op: PageOp;
  /** The request's sequence number. */
  seq: number;
  /** GET: the pages, in request order. */
  data?: Uint8Array;
  /** Set when the request failed. */
  error?: string;
}

/** A page message that does not parse. */
export class PageWireError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "PageWireError";
  }
}

function header(
  op: number,
  status: number,
  seq: number,
  count: number,
  extra: number,
  body: number,
) {
  const out = new Uint8Array(HEADER + body);
  const dv = new DataView(out.buffer);
  dv.setUint8(0, op);
  dv.setUint8(1, status);
  dv.setUint32(4, seq, true);
  dv.setUint32(8, count, true);
  dv.setUint32(12, extra, true);
  return out;
}

/** Encodes a request; PUT carries `data`. */
export function encodePageRequest(r: PageRequest): Uint8Array {
  const n = r.gfns.length;
  const dataLen = r.op === PageOp.PUT ? n * PAGE_SIZE : 0;
  if (r.op === PageOp.PUT && (r.data?.length ?? 0) !== dataLen) {
    throw new PageWireError(`PUT of ${n} pages needs ${dataLen} bytes of data`);
  }
  const out = header(r.op, 0, r.seq, n, 0, n * 4 + dataLen);
  new Uint32Array(out.buffer, HEADER, n).set(r.gfns);
  if (dataLen) out.set(r.data!, HEADER + n * 4);
  return out;
}

/** Decodes a request; throws PageWireError on anything malformed. */
export function decodePageRequest(b: Uint8Array, pages: number): PageRequest {
  if (b.length < HEADER) throw new PageWireError(`page request of ${b.length} bytes is too short`);
  const dv = new DataView(b.buffer, b.byteOffset, b.byteLength);
  const op = dv.getUint8(0) as PageOp;
  if (op !== PageOp.GET && op !== PageOp.PUT && op !== PageOp.RELEASE) {
    throw new PageWireError(`unknown page operation ${op}`);
  }
  const seq = dv.getUint32(4, true), n = dv.getUint32(8, true);
  if (n > MAX_BATCH) throw new PageWireError(`batch of ${n} pages exceeds ${MAX_BATCH}`);
  const dataLen = op === PageOp.PUT ? n * PAGE_SIZE : 0;
  if (b.length !== HEADER + n * 4 + dataLen) {
    throw new PageWireError(`page request of ${b.length} bytes does not match its ${n} pages`);
  }
  const gfns = new Uint32Array(n);
  for (let i = 0; i < n; i++) {
    gfns[i] = dv.getUint32(HEADER + i * 4, true);
    if (gfns[i] >= pages) {
      throw new PageWireError(`gfn ${gfns[i]} is outside the VM's ${pages} pages`);
    }
  }
  return {
    op,
    seq,
    gfns,
    data: dataLen ? b.subarray(HEADER + n * 4) : undefined,
  };
}

/** Encodes a reply: pages for a GET, an error message, or a bare acknowledgement. */
export function encodePageReply(r: PageReply): Uint8Array {
  if (r.error !== undefined) {
    const msg = new TextEncoder().encode(r.error);
    const out = header(r.op, 1, r.seq, 0, msg.length, msg.length);
    out.set(msg, HEADER);
    return out;
  }
  const data = r.data ?? new Uint8Array(0);
  if (data.length % PAGE_SIZE) {
    throw new PageWireError(`reply data of ${data.length} bytes is not whole pages`);
  }
  const out = header(r.op, 0, r.seq, data.length / PAGE_SIZE, 0, data.length);
  out.set(data, HEADER);
  return out;
}

/** Decodes a reply. */
export function decodePageReply(b: Uint8Array): PageReply {
  if (b.length < HEADER) throw new PageWireError(`page reply of ${b.length} bytes is too short`);
  const dv = new DataView(b.buffer, b.byteOffset, b.byteLength);
  const op = dv.getUint8(0) as PageOp, seq = dv.getUint32(4, true), status = dv.getUint8(1);
  if (op !== PageOp.GET && op !== PageOp.PUT && op !== PageOp.RELEASE) {
    throw new PageWireError(`unknown page operation ${op} in a reply`);
  }
  if (status === 1) {
    if (b.length !== HEADER + dv.getUint32(12, true)) {
      throw new PageWireError(`page reply of ${b.length} bytes does not match its error's length`);
    }
    return { op, seq, error: new TextDecoder().decode(b.subarray(HEADER)) };
  }
  if (status !== 0) throw new PageWireError(`page reply status ${status} is neither 0 nor 1`);
  const n = dv.getUint32(8, true);
  if (b.length !== HEADER + n * PAGE_SIZE) {
    throw new PageWireError(`page reply of ${b.length} bytes does not match its ${n} pages`);
  }
  return { op, seq, data: n ? b.subarray(HEADER) : undefined };
}
