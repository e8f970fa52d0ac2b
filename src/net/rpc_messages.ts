/**
 * The RPC envelope carried in control frames: versioned requests with a deadline, cancellation and
 * the end of an upload; a reply is the dispatcher's outcome under the request's id. `parseRequest`
 * validates untrusted input field by field.
 */
import { decodeCbor } from "../codec/cbor.ts";
import { RpcError } from "../rpc/errors.ts";

/** The typed error a reply carries, importable from the envelope it travels in. */
export { RpcError, type RpcErrorCode } from "../rpc/errors.ts";

/** RPC protocol version (major); a peer with another major is answered with `unsupported-version`. */
export const RPC_VERSION = 1;

/** A request. */
export interface RpcRequest {
  /** Protocol version. */
  v: number;
  /** Request id, unique per connection. */
  id: number;
  /** Method name, e.g. "health". */
  method: string;
  /** Milliseconds the caller will wait; the callee gives up after it. */
  deadlineMs: number;
  /** Arguments. */
  args: Record<string, unknown>;
}

/** A cancellation of request `id`. */
export interface RpcCancel {
  /** Protocol version. */
  v: number;
  /** Request to cancel. */
  cancel: number;
}

/** The caller has sent every DATA frame of request `eod`. */
export interface RpcEndOfData {
  /** Protocol version. */
  v: number;
  /** Request whose upload ended. */
  eod: number;
}

const MAX_DEADLINE_MS = 24 * 3600 * 1000;

/** Decodes and validates a control payload as a request, cancellation or end of upload; throws RpcError. */
export function parseRequest(payload: Uint8Array): RpcRequest | RpcCancel | RpcEndOfData {
  let m: unknown;
  try {
    m = decodeCbor(payload);
  } catch (e) {
    throw new RpcError("bad-request", `malformed request: ${(e as Error).message}`);
  }
  if (typeof m !== "object" || m === null || Array.isArray(m)) {
    throw new RpcError("bad-request", "request is not a map");
  }
  const r = m as Record<string, unknown>;
  if (typeof r.v !== "number" || !Number.isInteger(r.v)) {
    throw new RpcError("bad-request", "request has no version");
  }
  if (r.v !== RPC_VERSION) {
    throw new RpcError(
      "unsupported-version",
      `RPC version ${r.v} is not supported (this agent speaks ${RPC_VERSION})`,
    );
  }
  if ("cancel" in r) {
    if (!Number.isSafeInteger(r.cancel)) {
      throw new RpcError("bad-request", "cancel needs a request id");
    }
    return { v: r.v, cancel: r.cancel as number };
  }
  if ("eod" in r) {
    if (!Number.isSafeInteger(r.eod)) throw new RpcError("bad-request", "eod needs a request id");
    return { v: r.v, eod: r.eod as number };
  }
  if (!Number.isSafeInteger(r.id) || (r.id as number) < 0) {
    throw new RpcError("bad-request", "request id must be a non-negative integer");
  }
  if (typeof r.method !== "string" || !/^[a-z][a-z0-9.]{0,63}$/.test(r.method)) {
    throw new RpcError("bad-request", "method must be a short lower-case name");
  }
  const deadlineMs = r.deadlineMs ?? 30_000;
  if (typeof deadlineMs !== "number" || !(deadlineMs > 0) || deadlineMs > MAX_DEADLINE_MS) {
    throw new RpcError("bad-request", "deadlineMs must be between 0 and 24 h");
  }
  const args = r.args ?? {};
  if (typeof args !== "object" || args === null || Array.isArray(args)) {
    throw new RpcError("bad-request", "args must be a map");
  }
  return {
    v: r.v,
    id: r.id as number,
    method: r.method,
    deadlineMs,
    args: args as Record<string, unknown>,
  };
}
