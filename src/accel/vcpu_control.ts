/**
 * The shared-memory protocol between a vCPU's Worker (inside its accelerator's run call most of the
 * time) and the VMM thread: a state word that the VMM moves to PAUSE/STOP and the Worker
 * acknowledges, and a reply slot for port reads the VMM's devices answer. Every accelerator's
 * Worker loop speaks it; what only one backend needs travels in `VcpuInit.backend` and the `ready`
 * message's `info`.
 */

/** Int32 slots of the control SharedArrayBuffer. */
export const SLOT = {
  /** One of `RunState`. */
  STATE: 0,
  /** 1 once the VMM wrote the answer to the pending port read. */
  IN_READY: 1,
  /** The answer to the pending port read. */
  IN_VALUE: 2,
  /** Exits handled (wraps), for diagnostics and benchmarks. */
  EXITS: 3,
  /** Exits that went to the VMM thread (claimed ports). */
  FORWARDED: 4,
} as const;

/** Size of the control buffer in bytes. */
export const CONTROL_BYTES = 64;

/** States of the vCPU run loop. */
export const RunState = {
  RUNNING: 0,
  PAUSE_REQUESTED: 1,
  PAUSED: 2,
  STOP_REQUESTED: 3,
  STOPPED: 4,
} as const;

/** The message that starts a vCPU Worker. */
export interface VcpuInit {
  /** vCPU index. */
  index: number;
  /** The control buffer. */
  control: SharedArrayBuffer;
  /** Ports some device claims: accesses to them go to the VMM thread, others are ignored here. */
  claimedPorts: number[];
  /** What the accelerator's Worker needs besides (its `WorkerSpec.init`). */
  backend: Record<string, unknown>;
}

/** Messages from a vCPU Worker to the VMM thread. */
export type VcpuMessage =
  | { t: "ready"; index: number; info: Record<string, unknown> }
  | { t: "out"; index: number; port: number; size: number; value: number }
  | { t: "in"; index: number; port: number; size: number }
  | { t: "shutdown"; index: number; reason: string }
  | { t: "error"; index: number; reason: string }
  | { t: "stopped"; index: number };
