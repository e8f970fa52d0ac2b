/** A 16550A UART: the guest's console port. */
import type { PioDevice } from "./bus.ts";

/** Constructor and restore arguments of a {@link Serial16550}. */
export interface SerialArgs {
  /** Bus name; default "com1". */
  name?: string;
  /** First of the eight ports; default 0x3f8 (COM1). */
  base?: number;
  /** ISA interrupt line; default 4. */
  irq?: number;
  /** Drives the interrupt line (level: true = asserted). */
  setIrq: (line: number, level: boolean) => void;
  /** Receives transmitted bytes, in order. */
  output: (bytes: Uint8Array) => void;
}

/** A UART's saved state: every register, the unread input and the pending THRE interrupt. */
export interface SerialState {
  ier: number;
  fcr: number;
  lcr: number;
  mcr: number;
  lsr: number;
  msr: number;
  scr: number;
  dll: number;
  dlm: number;
  rx: Uint8Array;
  thrInterruptPending: boolean;
}

/** Receive buffer size; far larger than the chip's 16 bytes so pasted console input survives. */
export const SERIAL_RX_CAPACITY = 4096;

const IER_RDI = 0x01, IER_THRI = 0x02, IER_RLSI = 0x04, IER_MSI = 0x08;
const IIR_NONE = 0x01, IIR_MSI = 0x00, IIR_THRI = 0x02, IIR_RDI = 0x04, IIR_RLSI = 0x06;
const FCR_ENABLE = 0x01, FCR_CLEAR_RX = 0x02;
const LCR_DLAB = 0x80;
const MCR_LOOP = 0x10;
const LSR_DR = 0x01, LSR_OE = 0x02, LSR_ERRORS = 0x1e, LSR_THRE = 0x20, LSR_TEMT = 0x40;
const MSR_DELTAS = 0x0f, MSR_RI = 0x40;
/** DCD, DSR and CTS: a terminal is always attached. */
const MSR_CONNECTED = 0xb0;
const REGISTERS = ["ier", "fcr", "lcr", "mcr", "lsr", "msr", "scr", "dll", "dlm"] as const;

/** A 16550A UART on the port-I/O bus (COM1 unless told otherwise). */
export class Serial16550 implements PioDevice {
  /** Bus name. */
  readonly name: string;
  /** The eight UART registers. */
  readonly ports: ReadonlyArray<readonly [number, number]>;
  private readonly base: number;
  private readonly irq: number;
  private readonly setIrq: SerialArgs["setIrq"];
  private readonly output: SerialArgs["output"];
  private ier = 0;
  private fcr = 0;
  private lcr = 0;
  private mcr = 0;
  /** Only the sticky error bits; DR, THRE and TEMT follow the buffers. */
  private lsrErrors = 0;
  private msr = MSR_CONNECTED;
  private scr = 0;
  private dll = 0x0c; // 9600 baud, what firmware would have left
  private dlm = 0;
  private readonly rx = new Uint8Array(SERIAL_RX_CAPACITY);
  private rxHead = 0;
  private rxCount = 0;
  private thrPending = false;
  private irqLevel = false;

  /** A UART in its reset state. */
  constructor(args: SerialArgs) {
    this.name = args.name ?? "com1";
    this.base = args.base ?? 0x3f8;
    this.irq = args.irq ?? 4;
    this.setIrq = args.setIrq;
    this.output = args.output;
    this.ports = [[this.base, 8]];
  }

  /** A UART with `state`; re-asserts its interrupt line if that state has one pending. */
  static restore(args: SerialArgs, state: SerialState): Serial16550 {
    for (const r of REGISTERS) {
      const v = state[r];
      if (!Number.isInteger(v) || v < 0 || v > 0xff) throw new Error(`serial state: bad ${r}`);
    }
    if (!(state.rx instanceof Uint8Array) || state.rx.length > SERIAL_RX_CAPACITY) {
      throw new Error("serial state: bad rx");
    }
    const dev = new Serial16550(args);
    dev.ier = state.ier & 0x0f;
    dev.fcr = state.fcr;
    dev.lcr = state.lcr;
    dev.mcr = state.mcr;
    dev.lsrErrors = state.lsr & LSR_ERRORS;
    dev.msr = state.msr;
    dev.scr = state.scr;
    dev.dll = state.dll;
    dev.dlm = state.dlm;
    dev.rx.set(state.rx);
    dev.rxCount = state.rx.length;
    dev.thrPending = state.thrInterruptPending === true;
    // A fresh line is low, and KVM's per-source line level is not part of the irqchip state.
    dev.updateIrq();
    return dev;
  }

  /** The UART's complete state. */
  save(): SerialState {
    const rx = new Uint8Array(this.rxCount);
    for (let i = 0; i < this.rxCount; i++) rx[i] = this.rx[(this.rxHead + i) % SERIAL_RX_CAPACITY];
    return {
      ier: this.ier,
      fcr: this.fcr,
      lcr: this.lcr,
      mcr: this.mcr,
      lsr: this.lsr(),
      msr: this.msr,
      scr: this.scr,
      dll: this.dll,
      dlm: this.dlm,
      rx,
      thrInterruptPending: this.thrPending,
    };
  }

  /** Console input; returns how many bytes fit (the rest are dropped and flag an overrun). */
  enqueueInput(bytes: Uint8Array): number {
    // In loopback the receiver is wired to the transmitter, not to the line.
    if (this.mcr & MCR_LOOP) return 0;
    let n = 0;
    while (n < bytes.length && this.pushRx(bytes[n])) n++;
    this.updateIrq();
    return n;
  }

  /** A guest IN (byte-wide: wider accesses see only the addressed register). */
  read(port: number, _size: number): number {
    const v = this.readRegister(port - this.base);
    this.updateIrq();
    return v;
  }

  /** A guest OUT. */
  write(port: number, _size: number, value: number): void {
    this.writeRegister(port - this.base, value & 0xff);
    this.updateIrq();
  }

  private readRegister(offset: number): number {
    const dlab = (this.lcr & LCR_DLAB) !== 0;
    switch (offset) {
      case 0:
        return dlab ? this.dll : this.popRx();
      case 1:
        return dlab ? this.dlm : this.ier;
      case 2: {
        const id = this.interruptId();
        // Reading the identification acknowledges a THRE interrupt, as the chip does.
        if (id === IIR_THRI) this.thrPending = false;
        return id | (this.fcr & FCR_ENABLE ? 0xc0 : 0);
      }
      case 3:
        return this.lcr;
      case 4:
        return this.mcr;
      case 5: {
        const v = this.lsr();
        this.lsrErrors = 0;
        return v;
      }
      case 6: {
        const v = this.msr;
        this.msr &= ~MSR_DELTAS;
        return v;
      }
      default:
        return this.scr;
    }
  }

  private writeRegister(offset: number, v: number): void {
    const dlab = (this.lcr & LCR_DLAB) !== 0;
    switch (offset) {
      case 0:
        if (dlab) this.dll = v;
        else this.transmit(v);
        break;
      case 1:
        if (dlab) this.dlm = v;
        else {
          // Enabling the THRE interrupt while THR is empty raises it at once (16550 behaviour).
          if ((v ^ this.ier) & IER_THRI) this.thrPending = (v & IER_THRI) !== 0;
          this.ier = v & 0x0f;
        }
        break;
      case 2:
        // Toggling FIFO mode empties the FIFOs, as on the chip.
        if ((v ^ this.fcr) & FCR_ENABLE || v & FCR_CLEAR_RX) this.rxHead = this.rxCount = 0;
        this.fcr = v & 0xc9;
        break;
      case 3:
        this.lcr = v;
        break;
      case 4:
        this.mcr = v & 0x1f;
        // In loopback the modem inputs CTS, DSR, RI and DCD are RTS, DTR, OUT1 and OUT2.
        this.setModemStatus(
          this.mcr & MCR_LOOP
            ? ((v & 0x02) << 3) | ((v & 0x01) << 5) | ((v & 0x04) << 4) | ((v & 0x08) << 4)
            : MSR_CONNECTED,
        );
        break;
      case 7:
        this.scr = v;
        break;
      default:
        // LSR and MSR writes are factory-test features no driver uses.
        break;
    }
  }

  private transmit(byte: number): void {
    this.thrPending = false;
    // Dropping the line before the next THRE interrupt gives edge-triggered PIC inputs an edge.
    this.updateIrq();
    if (this.mcr & MCR_LOOP) this.pushRx(byte);
    else this.output(Uint8Array.of(byte));
    // Transmission is instantaneous: THR and the shift register are empty again.
    this.thrPending = true;
  }

  private lsr(): number {
    return this.lsrErrors | LSR_THRE | LSR_TEMT | (this.rxCount > 0 ? LSR_DR : 0);
  }

  private setModemStatus(status: number): void {
    const old = this.msr;
    // CTS, DSR and DCD flag any change; RI flags only its trailing edge.
    const deltas = (((old ^ status) & 0xb0) >> 4) | ((old & ~status & MSR_RI) >> 4);
    this.msr = status | (old & MSR_DELTAS) | deltas;
  }

  private interruptId(): number {
    if (this.ier & IER_RLSI && this.lsrErrors) return IIR_RLSI;
    // Reported at once rather than at the FIFO trigger level or after a character timeout:
    // drivers handle both identically and the guest sees its input sooner.
    if (this.ier & IER_RDI && this.rxCount > 0) return IIR_RDI;
    if (this.ier & IER_THRI && this.thrPending) return IIR_THRI;
    if (this.ier & IER_MSI && this.msr & MSR_DELTAS) return IIR_MSI;
    return IIR_NONE;
  }

  /**
   * Follows the chip's INTR output; OUT2 does not gate it (as in QEMU and Firecracker), since
   * no current driver depends on the PC board's gate.
   */
  private updateIrq(): void {
    const level = this.interruptId() !== IIR_NONE;
    if (level === this.irqLevel) return;
    this.irqLevel = level;
    this.setIrq(this.irq, level);
  }

  private pushRx(byte: number): boolean {
    if (this.rxCount === SERIAL_RX_CAPACITY) {
      this.lsrErrors |= LSR_OE;
      return false;
    }
    this.rx[(this.rxHead + this.rxCount++) % SERIAL_RX_CAPACITY] = byte;
    return true;
  }

  private popRx(): number {
    if (this.rxCount === 0) return 0;
    const byte = this.rx[this.rxHead];
    this.rxHead = (this.rxHead + 1) % SERIAL_RX_CAPACITY;
    this.rxCount--;
    return byte;
  }
}
