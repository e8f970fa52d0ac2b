/** The I/O ports memstamp reports on: progress and command events, and ring-0 faults. */
import type { PioDevice } from "../../devices/bus.ts";
import { EVENT, PORT } from "./layout.ts";

/** Counters the report port keeps. */
export interface ReportPortState {
  /** Progress reports received. */
  progress: number;
  /** vCPUs that reported the end of the stamping pass. */
  stamped: number;
  /** Command completions received. */
  commands: number;
  /** Exception vector of the last ring-0 fault, or null. */
  lastFault: number | null;
}

/** Receives memstamp's port writes; a fault is passed to `onFault` so the VMM can stop the VM. */
export class MemstampReportPort implements PioDevice {
  /** Bus name. */
  readonly name = "memstamp-report";
  /** Claimed ports. */
  readonly ports = [[PORT.EVENT, 1], [PORT.FAULT, 1]] as const;
  private s: ReportPortState = { progress: 0, stamped: 0, commands: 0, lastFault: null };

  constructor(private readonly onFault: (vector: number) => void = () => {}) {}

  /** Rebuilds the port with its counters. */
  static restore(
    args: { onFault?: (vector: number) => void },
    state: ReportPortState,
  ): MemstampReportPort {
    const p = new MemstampReportPort(args.onFault);
    p.s = structuredClone(state);
    return p;
  }

  /** Reads as zero: the guest never reads these ports. */
  read(): number {
    return 0;
  }

  /** Handles a report. */
  write(port: number, _size: number, value: number): void {
    if (port === PORT.FAULT) {
      this.s.lastFault = value;
      this.onFault(value);
      return;
    }
    const ev = value & 0xffff;
    if (ev === EVENT.PROGRESS) this.s.progress++;
    else if (ev === EVENT.STAMPED) this.s.stamped++;
    else if (ev === EVENT.CMD_DONE) this.s.commands++;
  }

  /** The counters. */
  save(): ReportPortState {
    return structuredClone(this.s);
  }
}
