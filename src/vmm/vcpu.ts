/**
 * A vCPU as the VMM thread sees it: its accelerator vCPU, its Worker, pause/resume/stop through the
 * shared control word, answers to port reads, and its saved state.
 */
import type { AccelVcpu, AccelVm } from "../accel/accel.ts";
import type { CpuState } from "../accel/cpu_state.ts";
import {
  CONTROL_BYTES,
  type RunState,
  RunStateWord,
  SLOT,
  type VcpuInit,
  type VcpuMessage,
} from "../accel/vcpu_control.ts";
import type { Persist } from "../codec/persist.ts";

/** Called for every message a vCPU Worker posts. */
export type VcpuMessageHandler = (m: VcpuMessage) => void;

/** One vCPU and its Worker thread. */
export class Vcpu implements Persist<CpuState> {
  readonly #backend: AccelVcpu;
  readonly #control = new SharedArrayBuffer(CONTROL_BYTES);
  readonly #ctl = new Int32Array(this.#control);
  readonly #state = new RunStateWord(this.#control);
  #worker?: Worker;

  private constructor(backend: AccelVcpu) {
    this.#backend = backend;
    this.#state.init("paused");
  }

  /** Creates vCPU `index` of `vm` in its reset state. */
  static create(vm: AccelVm, index: number): Vcpu {
    return new Vcpu(vm.createVcpu(index));
  }

  /** Creates vCPU `index` of `vm` and installs a saved state. */
  static restore(vm: AccelVm, index: number, state: CpuState): Vcpu {
    const v = new Vcpu(vm.createVcpu(index));
    try {
      v.load(state);
    } catch (e) {
      v.#backend.close();
      throw e;
    }
    return v;
  }

  /** vCPU index. */
  get index(): number {
    return this.#backend.index;
  }

  /** The accelerator's vCPU (for accelerator-specific measurements; the VMM drives it here). */
  get backend(): AccelVcpu {
    return this.#backend;
  }

  /** Exits handled so far (wrapping 32-bit). */
  get exits(): number {
    return Atomics.load(this.#ctl, SLOT.EXITS) >>> 0;
  }

  /** Port accesses forwarded to the VMM thread (claimed ports) so far (wrapping 32-bit). */
  get forwarded(): number {
    return Atomics.load(this.#ctl, SLOT.FORWARDED) >>> 0;
  }

  /** Current loop state. */
  get state(): RunState {
    return this.#state.get();
  }

  /** Starts the accelerator's Worker, paused; resolves once it is ready (and attached). */
  async start(claimedPorts: number[], onMessage: VcpuMessageHandler): Promise<void> {
    const spec = this.#backend.worker();
    const w = new Worker(spec.url, { type: "module" });
    this.#worker = w;
    const ready = Promise.withResolvers<void>();
    w.onmessage = (e: MessageEvent<VcpuMessage>) => {
      const m = e.data;
      if (m.t === "ready") {
        try {
          this.#backend.attach(m.info);
          ready.resolve();
        } catch (err) {
          ready.reject(err);
        }
        return;
      }
      onMessage(m);
    };
    w.onerror = (e) => {
      e.preventDefault();
      ready.reject(new Error(`vCPU ${this.index} worker failed: ${e.message}`));
      onMessage({ t: "error", index: this.index, reason: e.message });
    };
    const init: VcpuInit = {
      index: this.index,
      control: this.#control,
      claimedPorts,
      backend: spec.init,
    };
    w.postMessage(init);
    await ready.promise;
  }

  /** Lets the vCPU run (a paused one, or one asked to pause; never one asked to stop). */
  resume(): void {
    this.#state.move("running");
  }

  /** Asks a running vCPU to leave guest code and park; `waitParked` resolves when it has. */
  requestPause(): void {
    if (this.#state.move("pause-requested") === "running") this.#backend.kick();
  }

  /** Asks the vCPU thread to exit. */
  requestStop(): void {
    if (this.#state.get() === "stopped") return;
    this.#state.move("stop-requested");
    this.#backend.kick();
  }

  /** Resolves once the vCPU is parked (paused or stopped), or rejects after `timeoutMs`. */
  async waitParked(timeoutMs = 5000): Promise<void> {
    const deadline = performance.now() + timeoutMs;
    for (;;) {
      const st = this.#state.get();
      if (st === "paused" || st === "stopped") return;
      const left = deadline - performance.now();
      if (left <= 0) {
        throw new Error(`vCPU ${this.index} did not stop running within ${timeoutMs} ms`);
      }
      await this.#state.waitWhileAsync(st, Math.min(left, 50));
      if (st === "pause-requested" || st === "stop-requested") this.#backend.kick();
    }
  }

  /** Answers the Worker's pending port read. */
  answerIn(value: number): void {
    Atomics.store(this.#ctl, SLOT.IN_VALUE, value | 0);
    Atomics.store(this.#ctl, SLOT.IN_READY, 1);
    Atomics.notify(this.#ctl, SLOT.IN_READY);
  }

  /** Saves the complete vCPU state; the vCPU must be parked (or not started). */
  save(): CpuState {
    return this.#backend.save();
  }

  /** Installs a state; the vCPU must not have started (boot: `save()`, modify, `load()`). */
  load(state: CpuState): void {
    if (this.#worker) throw new Error(`vCPU ${this.index}: load() after start`);
    this.#backend.load(state);
  }

  /** Stops the Worker (if any) and releases the accelerator's vCPU. */
  async close(): Promise<void> {
    if (this.#worker) {
      this.requestStop();
      try {
        await this.waitParked(2000);
      } catch {
        // A stuck thread cannot be joined; terminating the Worker is all that is left.
      }
      this.#worker.terminate();
      this.#worker = undefined;
    }
    this.#backend.close();
  }
}
