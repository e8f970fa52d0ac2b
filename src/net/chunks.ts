/** Whole byte arrays over an RPC stream's DATA frames: cut into pieces to send, joined on receipt. */

/** Bytes per DATA frame when a whole array is uploaded. */
const PIECE = 256 * 1024;

/** `bytes` in pieces that fit DATA frames, as an upload. */
export async function* piecesOf(bytes: Uint8Array): AsyncIterable<Uint8Array> {
  for (let o = 0; o < bytes.length; o += PIECE) yield bytes.subarray(o, o + PIECE);
}

/** Joins every chunk of `data` (an RPC handler's upload, or collected replies) into one array. */
export async function gather(data: AsyncIterable<Uint8Array> | Uint8Array[]): Promise<Uint8Array> {
  const parts: Uint8Array[] = [];
  for await (const b of data) parts.push(b);
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  parts.reduce((o, p) => (out.set(p, o), o + p.length), 0);
  return out;
}
