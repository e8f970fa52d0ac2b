/**
 * Store files moving in and out of an agent: streamed out of a store, written into one, and pushed
 * agent to agent. Data moves only by push from a host that holds it, on an operator's request, so no
 * agent can read another's checkpoints; the receiving agent checks its sender is a cluster agent,
 * confines the name, reserves the space before the first byte, and keeps an interrupted copy aside
 * (`FILE.part`) so the next push resumes where this one broke.
 */
import { basename, dirname } from "node:path";
import { existsSync } from "node:fs";
import { MANIFEST_FILE } from "../ckpt/manifest.ts";
import { holdGeneration } from "../ckpt/store.ts";
import { placeFile } from "../ffi/atomic_file.ts";
import * as libc from "../ffi/libc.ts";
import { openRegular } from "../ffi/regular_file.ts";
import type { RpcClient } from "../net/quic.ts";
import type { RpcHandler } from "../rpc/dispatcher.ts";
import { RpcError } from "../rpc/errors.ts";
import { inStore, isCommitted, STORE_CHUNK } from "./store_files.ts";
import type { UploadSpace } from "./upload_space.ts";

/** A store file opened to be read: its descriptor and size, or a bad-request naming why not. */
function openStoreFile(path: string): { fd: number; size: number } {
  try {
    return openRegular(path);
  } catch (e) {
    throw new RpcError("bad-request", (e as Error).message);
  }
}

/** The bytes of open file `fd` from `from` to `size`, in pieces; the caller closes `fd`. */
export async function* fileChunks(
  fd: number,
  from: number,
  size: number,
): AsyncGenerator<Uint8Array> {
  for (let at = from; at < size;) {
    const buf = new Uint8Array(Math.min(STORE_CHUNK, size - at));
    const n = libc.pread(fd, Deno.UnsafePointer.of(buf), buf.length, at);
    if (n <= 0) throw new RpcError("failed", `the file ended at ${at} of ${size} bytes`);
    at += n;
    yield n === buf.length ? buf : buf.subarray(0, n);
  }
}

/** Room a replica reserves at a time, ahead of what has arrived. */
const REPLICA_STEP = 64 << 20;

/** How a store file is written: from scratch (an upload) or resumed (a push). */
interface ReceiveOptions {
  /** Bytes already in `FILE.part` from a push that broke; absent for an upload from scratch. */
  resumeAt?: number;
  /** `bytes` is an upper bound (a replica streamed while it is written), not the exact size. */
  atMost?: boolean;
}

/**
 * Writes the store file `path` (named `name` to the caller, `bytes` long) from `data`: aside in
 * `FILE.part`, fdatasynced, then placed. Nothing in a committed generation is replaced, and a
 * MANIFEST never is. Every byte is reserved before the first is written, so a refusal never comes
 * mid-write and a full disk ends in this file's `.part`, never in another's.
 */
export async function receiveStoreFile(
  space: UploadSpace,
  path: string,
  name: string,
  bytes: number,
  data: AsyncIterable<Uint8Array>,
  opts: ReceiveOptions = {},
): Promise<number> {
  const gen = dirname(path);
  const keep = isCommitted(gen) || basename(path) === MANIFEST_FILE;
  const refuse = () =>
    new RpcError("exists", `${name} exists in a committed generation; it never changes`);
  if (keep && existsSync(path)) throw refuse();
  Deno.mkdirSync(gen, { recursive: true, mode: 0o700 });
  // An uncommitted generation is being written by this copy: no writer's clean-up removes it.
  using _held = { [Symbol.dispose]: holdGeneration(gen) };
  const tmp = `${path}.part`;
  const from = opts.resumeAt ?? 0;
  if (opts.resumeAt !== undefined) {
    const have = existsSync(tmp) ? Deno.lstatSync(tmp).size : 0;
    if (have !== from) {
      throw new RpcError(
        "bad-request",
        `${name}: resuming at byte ${from}, but ${have} bytes of it are here; push from ${have}`,
      );
    }
  }
  if (from > bytes) throw new RpcError("bad-request", `${name}: resumes past its ${bytes} bytes`);
  // A replica's size is known only at its end: room is reserved a step ahead of what arrived, so a
  // refusal fails this copy (and its checkpoint), never one committed before it.
  const step = opts.atMost ? Math.min(bytes, REPLICA_STEP) : bytes - from;
  const releases = [space.reserve(name, step)];
  let reserved = step;
  const release = () => releases.forEach((r) => r());
  let got = from;
  try {
    using f = await Deno.open(tmp, {
      write: true,
      create: true,
      truncate: from === 0,
      mode: 0o600,
    });
    await f.seek(from, Deno.SeekMode.Start);
    for await (const b of data) {
      got += b.length;
      if (got > bytes) {
        throw new RpcError("bad-request", `${name}: more than the ${bytes} bytes declared`);
      }
      if (got - from > reserved) {
        const more = Math.min(bytes - from - reserved, REPLICA_STEP);
        releases.push(space.reserve(name, more));
        reserved += more;
      }
      for (let o = 0; o < b.length;) o += await f.write(b.subarray(o));
    }
    if (got !== bytes && !opts.atMost) {
      throw new RpcError("bad-request", `${name}: got ${got} bytes, expected ${bytes}`);
    }
    await f.syncData();
  } catch (e) {
    // A push that broke keeps what arrived, to be resumed; anything else starts again.
    if (opts.resumeAt === undefined || got > bytes) Deno.removeSync(tmp);
    throw e;
  } finally {
    release();
  }
  placeFile(tmp, path, keep || opts.atMost ? { replace: false, exists: refuse } : {});
  return got - from;
}

/** `args[field]` as a whole, non-negative number, or a bad-request naming it. */
function count(args: Record<string, unknown>, field: string, what: string): number {
  const v = args[field];
  if (!Number.isSafeInteger(v) || (v as number) < 0) {
    throw new RpcError("bad-request", `${args.file}: ${field} (${what}) is required`);
  }
  return v as number;
}

/** A push of one store file to another agent: where, from which byte, and whether it repairs. */
export interface PushRequest {
  /** Store name. */
  store: string;
  /** The file, `gNNNNNN/HOST.frag` or `gNNNNNN/MANIFEST`. */
  file: string;
  /** The receiving agent, HOST:PORT. */
  to: string;
  /** Bytes the receiver kept of it already. */
  offset: number;
  /** The copy replaces a lost or damaged one (the receiver counts it). */
  repair?: boolean;
}

/** Pushes store file `path` to agent `req.to` (through `connect`, as this agent), from `req.offset`. */
export async function pushStoreFile(
  connect: (addr: string) => Promise<RpcClient>,
  path: string,
  req: PushRequest,
): Promise<{ bytes: number; ms: number }> {
  const file = openStoreFile(path);
  const t0 = performance.now();
  try {
    if (req.offset > file.size) {
      throw new RpcError("bad-request", `${req.file}: offset ${req.offset} is past its end`);
    }
    const client = await connect(req.to);
    try {
      await client.call("ckpt.receive", {
        store: req.store,
        file: req.file,
        bytes: file.size,
        offset: req.offset,
        ...(req.repair ? { repair: true } : {}),
      }, { upload: fileChunks(file.fd, req.offset, file.size), deadlineMs: 3_600_000 });
    } finally {
      await client.close();
    }
    return { bytes: file.size - req.offset, ms: performance.now() - t0 };
  } finally {
    libc.close(file.fd);
  }
}

/**
 * Handlers over checkpoint root `root`: `ckpt.get` streams a store file out, `ckpt.put` writes an
 * upload in, `ckpt.push` sends a file to another agent (through `connect`, as this agent),
 * `ckpt.receive` takes one from an agent, resumable, and `ckpt.replicate` takes a fragment's
 * replica streamed while the fragment is written. One file is written by one call at a time, and
 * `onRepaired` hears of each copy received in place of a lost or damaged one.
 */
export function transferHandlers(
  root: string,
  space: UploadSpace,
  connect: (addr: string) => Promise<RpcClient>,
  onRepaired: () => void = () => {},
): Record<string, RpcHandler> {
  const writing = new Set<string>();
  // Two writers of one `.part` (a restore's push and an agent's own repair) would interleave.
  const alone = async <T>(path: string, name: unknown, write: () => Promise<T>): Promise<T> => {
    if (writing.has(path)) {
      throw new RpcError("busy", `${name} is being written by another call; try again`);
    }
    writing.add(path);
    try {
      return await write();
    } finally {
      writing.delete(path);
    }
  };
  return {
    "ckpt.get": async (args, ctx) => {
      const file = openStoreFile(inStore(root, args, "file"));
      try {
        for await (const b of fileChunks(file.fd, 0, file.size)) await ctx.send(b);
        return { bytes: file.size };
      } finally {
        libc.close(file.fd);
      }
    },
    "ckpt.put": async (args, ctx) => {
      const bytes = count(args, "bytes", "the size to upload");
      const path = inStore(root, args, "file");
      return await alone(path, args.file, async () => ({
        bytes: await receiveStoreFile(space, path, String(args.file), bytes, ctx.data),
      }));
    },
    "ckpt.receive": async (args, ctx) => {
      const bytes = count(args, "bytes", "the file's size");
      const offset = count(args, "offset", "where this push starts");
      const path = inStore(root, args, "file");
      const n = await alone(
        path,
        args.file,
        () =>
          receiveStoreFile(space, path, String(args.file), bytes, ctx.data, { resumeAt: offset }),
      );
      if (args.repair === true) onRepaired();
      return { bytes: n };
    },
    "ckpt.replicate": async (args, ctx) => {
      const maxBytes = count(args, "maxBytes", "an upper bound on the file's size");
      const path = inStore(root, args, "file");
      const n = await alone(
        path,
        args.file,
        () =>
          receiveStoreFile(space, path, String(args.file), maxBytes, ctx.data, { atMost: true }),
      );
      return { bytes: n };
    },
    "ckpt.push": (args) => {
      const offset = args.offset === undefined ? 0 : count(args, "offset", "where to start");
      const to = args.to;
      if (typeof to !== "string") throw new RpcError("bad-request", "to (HOST:PORT) is required");
      return pushStoreFile(connect, inStore(root, args, "file"), {
        store: String(args.store),
        file: String(args.file),
        to,
        offset,
        repair: args.repair === true,
      });
    },
  };
}
