/** A minimal i8042 keyboard controller: enough for guests to probe it and to reset the CPU. */
import type { PioDevice } from "./bus.ts";

/** Constructor and restore arguments of an {@link I8042}. */
export interface I8042Args {
  /** Bus name; default "i8042". */
  name?: string;
  /** The guest pulsed the CPU reset line. */
  onReset: () => void;
}

/** An i8042's saved state. */
export interface I8042State {
  /** Status register, including whether `outputByte` is still unread. */
  status: number;
  /** The controller configuration byte (commands 0x20/0x60). */
  commandByte: number;
  /** The last byte queued for the guest to read at port 0x60. */
  outputByte: number;
  /** The controller output port (command 0xD0/0xD1): bit 0 is the reset line, bit 1 A20. */
  outputPort: number;
  /** The command whose data byte the next write to port 0x60 is; 0 if none. */
  pendingCommand: number;
}

const DATA = 0x60, COMMAND = 0x64;
const ST_OBF = 0x01, ST_SYS = 0x04, ST_CMD = 0x08, ST_UNLOCKED = 0x10;
const CB_SYS = 0x04, CB_KBD_DISABLED = 0x10, CB_AUX_DISABLED = 0x20;
const OUTP_RESET = 0x01;
const FIELDS = ["status", "commandByte", "outputByte", "outputPort", "pendingCommand"] as const;

/** An i8042 on ports 0x60 and 0x64; no keyboard or mouse is attached behind it. */
export class I8042 implements PioDevice {
  /** Bus name. */
  readonly name: string;
  /** Data and command/status ports. */
  readonly ports: ReadonlyArray<readonly [number, number]> = [[DATA, 1], [COMMAND, 1]];
  private readonly onReset: () => void;
  // The VMM is the firmware, so the power-on self-test has passed (system flag set).
  private status = ST_SYS | ST_UNLOCKED;
  private commandByte = CB_SYS | 0x01;
  private outputByte = 0;
  private outputPort = OUTP_RESET | 0x02;
  private pendingCommand = 0;

  /** A controller in its post-POST state. */
  constructor(args: I8042Args) {
    this.name = args.name ?? "i8042";
    this.onReset = args.onReset;
  }

  /** A controller with `state`. */
  static restore(args: I8042Args, state: I8042State): I8042 {
    for (const f of FIELDS) {
      const v = state[f];
      if (!Number.isInteger(v) || v < 0 || v > 0xff) throw new Error(`i8042 state: bad ${f}`);
    }
    const dev = new I8042(args);
    dev.status = state.status;
    dev.commandByte = state.commandByte;
    dev.outputByte = state.outputByte;
    dev.outputPort = state.outputPort;
    dev.pendingCommand = state.pendingCommand;
    return dev;
  }

  /** The controller's complete state. */
  save(): I8042State {
    const { status, commandByte, outputByte, outputPort, pendingCommand } = this;
    return { status, commandByte, outputByte, outputPort, pendingCommand };
  }

  /** A guest IN: status at 0x64, the output buffer at 0x60. */
  read(port: number, _size: number): number {
    if (port === COMMAND) return this.status;
    this.status &= ~ST_OBF;
    return this.outputByte;
  }

  /** A guest OUT: a command at 0x64, a command's data byte at 0x60. */
  write(port: number, _size: number, value: number): void {
    const v = value & 0xff;
    if (port === COMMAND) {
      this.status |= ST_CMD;
      this.command(v);
      return;
    }
    this.status &= ~ST_CMD;
    const cmd = this.pendingCommand;
    this.pendingCommand = 0;
    if (cmd === 0x60) {
      this.commandByte = v;
      this.status = (this.status & ~ST_SYS) | (v & CB_SYS);
    } else if (cmd === 0xd1) {
      this.outputPort = v;
      if (!(v & OUTP_RESET)) this.onReset();
    }
    // Otherwise the byte is for the keyboard, and none is attached.
  }

  private command(cmd: number): void {
    this.pendingCommand = 0;
    switch (cmd) {
      case 0x20:
        return this.reply(this.commandByte);
      case 0x60:
      case 0xd1:
        this.pendingCommand = cmd;
        return;
      case 0xa7:
        this.commandByte |= CB_AUX_DISABLED;
        return;
      case 0xa8:
        this.commandByte &= ~CB_AUX_DISABLED;
        return;
      case 0xaa:
        this.status |= ST_SYS;
        return this.reply(0x55);
      case 0xab:
        return this.reply(0x00);
      case 0xad:
        this.commandByte |= CB_KBD_DISABLED;
        return;
      case 0xae:
        this.commandByte &= ~CB_KBD_DISABLED;
        return;
      case 0xd0:
        return this.reply(this.outputPort);
    }
    // 0xF0-0xFF pulse the output port lines whose bits are clear; bit 0 is CPU reset.
    if (cmd >= 0xf0 && !(cmd & OUTP_RESET)) this.onReset();
  }

  private reply(byte: number): void {
    this.outputByte = byte;
    this.status |= ST_OBF;
  }
}
