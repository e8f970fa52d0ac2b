/**
 * The state an emulated vCPU's Worker leaves at every park, so the VMM thread can save a parked
 * vCPU without a round trip: the neutral `CpuState`, structured-clone serialized into a shared
 * buffer with a length word in front. The Worker writes it before it publishes PAUSED.
 */
import { deserialize, serialize } from "node:v8";
import type { CpuState } from "../cpu_state.ts";

/** Bytes reserved for one snapshot (a CpuState serializes to about 2 KiB). */
export const SNAPSHOT_BYTES = 64 * 1024;

/** What the emulated vCPU's Worker needs besides the common start message. */
export interface EmuWorkerInit {
  /** Path of the built shim library. */
  shimPath: string;
  /** Host address of guest RAM. */
  ramAddr: bigint;
  /** Bytes of guest RAM. */
  ramSize: number;
  /** Host address of the shim state the VM's vCPUs share (dirty bytes, copy-on-write). */
  vmAddr: bigint;
  /** The kick word (one Int32) the VMM thread sets. */
  kick: SharedArrayBuffer;
  /** Where the Worker leaves its state at every park. */
  snapshot: SharedArrayBuffer;
  /** The state to start from. */
  state: CpuState;
}

/** Writes `state` into `buf`. */
export function writeSnapshot(buf: SharedArrayBuffer, state: CpuState): void {
  const bytes = serialize(state);
  if (bytes.length + 4 > buf.byteLength) {
    throw new RangeError(`a vCPU snapshot of ${bytes.length} bytes exceeds ${buf.byteLength}`);
  }
  new Uint8Array(buf, 4, bytes.length).set(bytes);
  Atomics.store(new Int32Array(buf, 0, 1), 0, bytes.length);
}

/** Reads the last snapshot from `buf`. */
export function readSnapshot(buf: SharedArrayBuffer): CpuState {
  const n = Atomics.load(new Int32Array(buf, 0, 1), 0);
  if (n <= 0) throw new Error("the emulated vCPU has not left a state yet");
  return deserialize(new Uint8Array(buf, 4, n).slice()) as CpuState;
}
