/** A minimal MC146818-style CMOS RTC: wall-clock time and the BIOS memory size registers. */
import type { PioDevice } from "./bus.ts";

/** Constructor and restore arguments of a {@link Cmos}. */
export interface CmosArgs {
  /** Guest RAM in bytes. */
  memSize: number;
  /** RAM below 4 GiB (the rest sits above it); default min(memSize, 4 GiB). */
  ramBelow4g?: number;
  /** Host time in ms since the epoch; default Date.now (injectable for tests). */
  now?: () => number;
}

/** A CMOS's saved state. */
export interface CmosState {
  /** All 128 bytes; the time registers in it are meaningful only while status B's SET bit is on. */
  ram: Uint8Array;
  /** The selected register (port 0x70, without the NMI bit). */
  index: number;
  /** Bit 7 of the last index write. */
  nmiDisabled: boolean;
  /** Guest clock minus host clock, in ms. */
  offsetMs: number;
}

const SEC = 0x00, MIN = 0x02, HOUR = 0x04, WDAY = 0x06, MDAY = 0x07, MONTH = 0x08, YEAR = 0x09;
const CENTURY = 0x32;
const TIME_REGS = [SEC, MIN, HOUR, WDAY, MDAY, MONTH, YEAR, CENTURY];
const REG_A = 0x0a, REG_B = 0x0b, REG_C = 0x0c, REG_D = 0x0d;
const B_SET = 0x80, B_BINARY = 0x04, B_24H = 0x02;
const KiB = 1024, MiB = 1024 * KiB, GiB = 1024 * MiB;

/** The CMOS/RTC on ports 0x70 (index) and 0x71 (data). */
export class Cmos implements PioDevice {
  /** Bus name. */
  readonly name = "cmos";
  /** Index and data ports. */
  readonly ports: ReadonlyArray<readonly [number, number]> = [[0x70, 2]];
  private readonly ram = new Uint8Array(128);
  private readonly now: () => number;
  private index = 0;
  private nmiDisabled = false;
  private offsetMs = 0;

  /** A CMOS whose clock reads host time (UTC) and whose memory registers describe `memSize`. */
  constructor(args: CmosArgs) {
    this.now = args.now ?? Date.now;
    const low = Math.min(args.ramBelow4g ?? args.memSize, args.memSize, 4 * GiB);
    const ext = Math.floor(Math.max(0, Math.min(low, 64 * MiB) - MiB) / KiB);
    this.set16(0x15, 640);
    this.set16(0x17, ext);
    this.set16(0x30, ext);
    this.set16(0x34, Math.min(0xffff, Math.floor(Math.max(0, low - 16 * MiB) / (64 * KiB))));
    const high = Math.min(0xffffff, Math.floor((args.memSize - low) / (64 * KiB)));
    this.set16(0x5b, high & 0xffff);
    this.ram[0x5d] = high >>> 16;
    this.ram[REG_A] = 0x26;
    this.ram[REG_B] = B_24H;
    this.ram[REG_D] = 0x80;
  }

  /** A CMOS with `state`, its clock continuing from the saved offset against `args.now`. */
  static restore(args: CmosArgs, state: CmosState): Cmos {
    if (!(state.ram instanceof Uint8Array) || state.ram.length !== 128) {
      throw new Error("cmos state: bad ram");
    }
    if (!Number.isInteger(state.index) || state.index < 0 || state.index > 0x7f) {
      throw new Error("cmos state: bad index");
    }
    if (!Number.isFinite(state.offsetMs)) throw new Error("cmos state: bad offsetMs");
    const dev = new Cmos(args);
    dev.ram.set(state.ram);
    dev.index = state.index;
    dev.nmiDisabled = state.nmiDisabled === true;
    dev.offsetMs = state.offsetMs;
    return dev;
  }

  /** The CMOS's complete state. */
  save(): CmosState {
    const { index, nmiDisabled, offsetMs } = this;
    return { ram: this.ram.slice(), index, nmiDisabled, offsetMs };
  }

  /** A guest IN: the selected register at 0x71; the index port is write-only. */
  read(port: number, _size: number): number {
    if (port === 0x70) return 0xff;
    const i = this.index;
    if (TIME_REGS.includes(i) && !this.frozen()) return this.timeField(i);
    if (i === REG_C) {
      // Reading C acknowledges the interrupt flags.
      const v = this.ram[REG_C];
      this.ram[REG_C] = 0;
      return v;
    }
    return this.ram[i];
  }

  /** A guest OUT: selects a register at 0x70, writes it at 0x71. */
  write(port: number, _size: number, value: number): void {
    const v = value & 0xff;
    if (port === 0x70) {
      this.index = v & 0x7f;
      this.nmiDisabled = (v & 0x80) !== 0;
      return;
    }
    const i = this.index;
    if (TIME_REGS.includes(i)) {
      if (this.frozen()) {
        this.ram[i] = v;
        return;
      }
      this.latchTime();
      this.ram[i] = v;
      this.offsetMs = this.composeTime() - this.now();
    } else if (i === REG_A) {
      this.ram[REG_A] = v & 0x7f; // UIP is read-only, and never set: reads are never torn.
    } else if (i === REG_B) {
      const wasFrozen = this.frozen();
      // While SET is on the guest edits the time registers in RAM; clearing it starts the clock.
      if (!wasFrozen && v & B_SET) this.latchTime();
      this.ram[REG_B] = v | B_24H; // only 24-hour mode is modelled, and B says so
      if (wasFrozen && !(v & B_SET)) this.offsetMs = this.composeTime() - this.now();
    } else if (i !== REG_C && i !== REG_D) {
      this.ram[i] = v;
    }
  }

  private frozen(): boolean {
    return (this.ram[REG_B] & B_SET) !== 0;
  }

  private timeField(reg: number): number {
    const v = field(new Date(this.now() + this.offsetMs), reg);
    return this.ram[REG_B] & B_BINARY ? v : (Math.floor(v / 10) << 4) | (v % 10);
  }

  private latchTime(): void {
    for (const r of TIME_REGS) this.ram[r] = this.timeField(r);
  }

  /** The time the registers in RAM spell; the weekday is implied by the date, so it is ignored. */
  private composeTime(): number {
    const get = (r: number) => {
      const v = this.ram[r];
      return this.ram[REG_B] & B_BINARY ? v : (v >> 4) * 10 + (v & 0x0f);
    };
    // Setting the fields of a Date avoids Date.UTC's mapping of years 0-99 to 1900-1999.
    const d = new Date(0);
    d.setUTCFullYear(get(CENTURY) * 100 + get(YEAR), get(MONTH) - 1, get(MDAY));
    d.setUTCHours(get(HOUR), get(MIN), get(SEC), 0);
    return d.getTime();
  }

  private set16(reg: number, v: number): void {
    this.ram[reg] = v & 0xff;
    this.ram[reg + 1] = v >>> 8;
  }
}

function field(d: Date, reg: number): number {
  switch (reg) {
    case SEC:
      return d.getUTCSeconds();
    case MIN:
      return d.getUTCMinutes();
    case HOUR:
      return d.getUTCHours();
    case WDAY:
      return d.getUTCDay() + 1;
    case MDAY:
      return d.getUTCDate();
    case MONTH:
      return d.getUTCMonth() + 1;
    case YEAR:
      return d.getUTCFullYear() % 100;
    default:
      return Math.floor(d.getUTCFullYear() / 100);
  }
}
