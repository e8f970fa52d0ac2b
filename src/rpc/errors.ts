/**
 * The typed errors of dcres's RPC and their form on every wire: a code each side understands and a
 * message for people. A handler's error reaches the caller with its code, whichever transport
 * carried it, instead of being flattened to a string on the way.
 */

/** Error codes every side understands. */
export type RpcErrorCode =
  | "bad-request"
  | "unsupported-version"
  | "unknown-method"
  | "deadline-exceeded"
  | "cancelled"
  | "unauthenticated"
  | "permission-denied"
  /** The call met a damaged copy of a checkpoint file and set it aside: trying again reads another. */
  | "damaged-copy"
  /**
   * The VM is in the middle of another operation (a checkpoint, a migration), or the file is being
   * written by another call: try again later.
   */
  | "busy"
  /** The file is in a committed generation already (never replaced): there is nothing to copy. */
  | "exists"
  | "failed";

const CODES: ReadonlySet<string> = new Set<RpcErrorCode>([
  "bad-request",
  "unsupported-version",
  "unknown-method",
  "deadline-exceeded",
  "cancelled",
  "unauthenticated",
  "permission-denied",
  "damaged-copy",
  "busy",
  "exists",
  "failed",
]);

/** An RPC failed; carries the typed code from the other side. */
export class RpcError extends Error {
  constructor(readonly code: RpcErrorCode, message: string) {
    super(message);
    this.name = "RpcError";
  }
}

/**
 * A setting of this process is wrong (a flag, a configuration file, an address it was given): the
 * person who set it must change it, as the message says. No peer refused anything, so it is not an
 * RpcError and has no wire code of its own (thrown inside a handler, its caller sees "failed").
 */
export class ConfigError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "ConfigError";
  }
}

/** An error as it crosses a wire. */
export interface WireError {
  /** What kind of failure. */
  code: RpcErrorCode;
  /** What went wrong, for people. */
  message: string;
}

/** `e` as it crosses a wire: an RpcError keeps its code, anything else is "failed". */
export function toWireError(e: unknown): WireError {
  if (e instanceof RpcError) return { code: e.code, message: e.message };
  return { code: "failed", message: e instanceof Error ? e.message : String(e) };
}

/**
 * The code a peer sent; one this build does not know (a newer peer's) reads as "failed", so the
 * message still reaches the person.
 */
function codeOf(code: unknown): RpcErrorCode {
  return typeof code === "string" && CODES.has(code) ? code as RpcErrorCode : "failed";
}

/** The RpcError a peer's wire error stands for. */
export function fromWireError(w: unknown): RpcError {
  const e = (typeof w === "object" && w !== null ? w : {}) as Record<string, unknown>;
  return new RpcError(
    codeOf(e.code),
    typeof e.message === "string" ? e.message : "the peer failed without saying why",
  );
}
