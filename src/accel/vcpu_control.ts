/**
 * The shared-memory protocol between a vCPU's Worker (inside its accelerator's run call most of the
 * time) and the VMM thread: a state word that the VMM moves to PAUSE/STOP and the Worker
 * acknowledges, and a reply slot for port reads the VMM's devices answer. Every accelerator's
 * Worker loop speaks it; what only one backend needs travels in `VcpuInit.backend` and the `ready`
 * message's `info`.
 */

/** Int32 slots of the control SharedArrayBuffer. */
export const SLOT = {
  /** The run loop's `RunState`, as `RunStateWord` codes it. */
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

/**
 * The state of a vCPU's run loop. The VMM asks (`pause-requested`, `stop-requested`, back to
 * `running`), the Worker acknowledges (`paused`, `stopped`) or ends on its own (`stopped`: the guest
 * shut down or halted for good, or failed); `stopped` is final.
 */
export type RunState = "running" | "pause-requested" | "paused" | "stop-requested" | "stopped";

/** Each state's code in the shared state word, by position. */
const STATES: readonly RunState[] = [
  "running",
  "pause-requested",
  "paused",
  "stop-requested",
  "stopped",
];

/** The moves the run loop allows, from each state. */
const NEXT: Readonly<Record<RunState, readonly RunState[]>> = {
  running: ["pause-requested", "stop-requested", "stopped"],
  "pause-requested": ["paused", "running", "stop-requested", "stopped"],
  paused: ["running", "stop-requested", "stopped"],
  "stop-requested": ["stopped"],
  stopped: [],
};

/** The shared state word of one vCPU, read and moved only along `NEXT`, by the VMM and its Worker. */
export class RunStateWord {
  readonly #ctl: Int32Array;

  /** The word in `control` (the vCPU's control buffer). */
  constructor(control: SharedArrayBuffer) {
    this.#ctl = new Int32Array(control);
  }

  /** The current state. */
  get(): RunState {
    return STATES[Atomics.load(this.#ctl, SLOT.STATE)];
  }

  /** Sets the first state of a vCPU whose Worker has not started yet. */
  init(state: RunState): void {
    Atomics.store(this.#ctl, SLOT.STATE, STATES.indexOf(state));
  }

  /**
   * Moves to `to` when the current state allows it, waking whoever waits on the word; returns the
   * state it left, or undefined (and changes nothing) when that move is not allowed.
   */
  move(to: RunState): RunState | undefined {
    for (;;) {
      const code = Atomics.load(this.#ctl, SLOT.STATE);
      const from = STATES[code];
      if (!NEXT[from].includes(to)) return undefined;
      if (Atomics.compareExchange(this.#ctl, SLOT.STATE, code, STATES.indexOf(to)) === code) {
        Atomics.notify(this.#ctl, SLOT.STATE);
        return from;
      }
    }
  }

  /** Blocks this thread (a Worker's) while the state is `state`, at most `timeoutMs`. */
  waitWhile(state: RunState, timeoutMs?: number): void {
    Atomics.wait(this.#ctl, SLOT.STATE, STATES.indexOf(state), timeoutMs);
  }

  /** Resolves once the state is no longer `state`, or after `timeoutMs` (the VMM thread). */
  async waitWhileAsync(state: RunState, timeoutMs: number): Promise<void> {
    const w = Atomics.waitAsync(this.#ctl, SLOT.STATE, STATES.indexOf(state), timeoutMs);
    if (w.async) await w.value;
  }
}

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
  /** The guest shut the machine down (a triple fault, a system event such as power off). */
  | { t: "shutdown"; index: number; reason: string }
  /**
   * The guest executed HLT with nothing that can ever wake it (interrupts off, or no interrupt
   * source armed): this vCPU stops for good. A HLT that an interrupt ends is no exit at all.
   */
  | { t: "halted"; index: number; reason: string }
  | { t: "error"; index: number; reason: string }
  | { t: "stopped"; index: number };
