/**
 * The control socket of a VMM process: one unix socket per VM in the state directory, speaking
 * newline-delimited JSON requests and replies, as VMMs and agents of earlier builds do. A request is
 * `{v, op, ...args}` with an optional `deadlineMs`; progress lines `{progress}` may come before its one
 * reply; an error reply carries its typed `code` beside the message (older peers read the message
 * alone). A `console` request turns the connection into a raw byte stream (guest serial out,
 * keystrokes in).
 */
import type { AccelKind } from "../../accel/accel.ts";
import type { CallOutcome, IncomingCall } from "../../rpc/dispatcher.ts";
import { RpcError, type RpcErrorCode } from "../../rpc/errors.ts";
import type { PagingStats } from "../../memory/paging_stats.ts";

/** Control protocol version; a server refuses requests from a newer major. */
export const CONTROL_VERSION = 1;

/** A request to a VMM. */
export type ControlRequest =
  | { v: number; op: "info" }
  | { v: number; op: "pause" }
  | { v: number; op: "resume" }
  | { v: number; op: "stop" }
  | { v: number; op: "verify"; timeoutMs?: number }
  | { v: number; op: "console" }
  | { v: number; op: "exec"; cmd: string; timeoutMs: number }
  | { v: number; op: string; [field: string]: unknown };

/** What `info` reports about a VM. */
export interface VmInfo {
  /** VM name. */
  name: string;
  /** Guest kind. */
  guest: string;
  /** The accelerator it runs on. */
  accel: AccelKind;
  /** RAM bytes. */
  memSize: number;
  /** vCPUs. */
  vcpus: number;
  /** VMM process id. */
  pid: number;
  /** Run state. */
  state: "running" | "paused" | "stopped";
  /** Why the VM is paused when nobody asked for it (e.g. a sub-host is unreachable). */
  pausedReason?: string;
  /** When its host's lapsed lease had stopped all its vCPUs (ms since the epoch), if it has. */
  fencedAtMs?: number;
  /** Milliseconds since the VM started. */
  uptimeMs: number;
  /** Exits handled per vCPU. */
  exits: number[];
  /** Restore timings, for VMs restored from a checkpoint. */
  restore?: { from: string; lazy: boolean; resumeMs: number; residentMs?: number; failed?: string };
  /** Remote paging, for split VMs. */
  paging?: PagingStats;
  /** memstamp progress, for memstamp guests. */
  memstamp?: { phase: number[]; written: number; ticks: number[] };
}

/** A reply: `ok` with a result, or an error message and its code (absent from older VMMs). */
export type ControlReply<T = unknown> =
  | { ok: true; result: T }
  | { ok: false; error: string; code?: RpcErrorCode };

/** The VM named in a command does not exist or its VMM is gone. */
export class VmNotFoundError extends Error {
  constructor(name: string, stateDir: string) {
    super(`no running VM named "${name}" in ${stateDir}; see 'dcres vm ls'`);
    this.name = "VmNotFoundError";
  }
}

/** JSON with bigints as decimal strings (the guest's counters are 64-bit). */
export function toJson(value: unknown): string {
  return JSON.stringify(value, (_, v) => (typeof v === "bigint" ? v.toString() : v));
}

/** One request line as a call for the dispatcher; throws RpcError on a line that is not one. */
export function parseControlRequest(line: string): IncomingCall {
  let req: Record<string, unknown> | null;
  try {
    req = JSON.parse(line);
  } catch {
    throw new RpcError("bad-request", "malformed control request (not JSON)");
  }
  if (typeof req?.v !== "number" || Math.floor(req.v) > CONTROL_VERSION) {
    throw new RpcError(
      "unsupported-version",
      `control protocol version ${req?.v} is not supported (this VMM speaks ${CONTROL_VERSION})`,
    );
  }
  const { v: _v, op, deadlineMs, ...args } = req;
  if (deadlineMs !== undefined && !(typeof deadlineMs === "number" && deadlineMs > 0)) {
    throw new RpcError("bad-request", "deadlineMs must be a positive number of milliseconds");
  }
  return { method: String(op), args, deadlineMs };
}

/** A call's outcome as its reply line's message. */
export function controlReplyOf(o: CallOutcome): ControlReply {
  return o.ok ? o : { ok: false, error: o.error.message, code: o.error.code };
}

/** A message as one line of the control socket. */
export function encodeLine(message: unknown): Uint8Array {
  return new TextEncoder().encode(toJson(message) + "\n");
}
