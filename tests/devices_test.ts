import { assert, assertEquals, assertThrows } from "./helpers/assert.ts";
import { PioBus } from "../src/vmm/devices/bus.ts";
import { Serial16550, SERIAL_RX_CAPACITY, type SerialArgs } from "../src/vmm/devices/serial.ts";
import { I8042 } from "../src/vmm/devices/i8042.ts";
import { Cmos } from "../src/vmm/devices/cmos.ts";

const COM1 = 0x3f8;
const THR = COM1, IER = COM1 + 1, IIR = COM1 + 2, FCR = COM1 + 2, LCR = COM1 + 3;
const MCR = COM1 + 4, LSR = COM1 + 5, MSR = COM1 + 6, SCR = COM1 + 7;

/** A UART whose output and interrupt line changes are recorded. */
function uart(make: (args: SerialArgs) => Serial16550 = (a) => new Serial16550(a)) {
  const out: number[] = [];
  const irqs: Array<[number, boolean]> = [];
  const dev = make({
    setIrq: (line, level) => irqs.push([line, level]),
    output: (bytes) => out.push(...bytes),
  });
  const level = () => irqs.length > 0 && irqs[irqs.length - 1][1];
  return { dev, out, irqs, level };
}

const bytes = (s: string) => new TextEncoder().encode(s);

Deno.test("UART transmits bytes in order and reports THRE and TEMT", () => {
  const { dev, out, irqs } = uart();
  for (const b of bytes("hello, world\n")) dev.write(THR, 1, b);
  assertEquals(new TextDecoder().decode(new Uint8Array(out)), "hello, world\n");
  assertEquals(dev.read(LSR, 1), 0x60); // THRE | TEMT, no data ready
  assertEquals(irqs, []); // IER is 0
});

Deno.test("UART DLAB switches ports 0 and 1 to the divisor latches", () => {
  const { dev, out } = uart();
  dev.write(IER, 1, 0x05);
  dev.write(LCR, 1, 0x83);
  dev.write(THR, 1, 0x01);
  dev.write(IER, 1, 0x02);
  assertEquals([dev.read(THR, 1), dev.read(IER, 1)], [0x01, 0x02]);
  assertEquals(out, []); // the divisor write was not transmitted
  dev.write(LCR, 1, 0x03);
  assertEquals(dev.read(IER, 1), 0x05);
  dev.write(THR, 1, 0x41);
  assertEquals(out, [0x41]);
  dev.write(LCR, 1, 0x83);
  assertEquals([dev.read(THR, 1), dev.read(IER, 1)], [0x01, 0x02]);
});

Deno.test("UART receive FIFO raises IRQ 4 exactly while IER enables it and data is pending", () => {
  const { dev, irqs, level } = uart();
  dev.write(FCR, 1, 0x07);
  dev.enqueueInput(bytes("ab"));
  assertEquals(irqs, []);
  assertEquals(dev.read(LSR, 1) & 0x01, 0x01);
  assertEquals(dev.read(IIR, 1), 0xc1); // FIFOs on, nothing pending
  dev.write(IER, 1, 0x01);
  assertEquals(irqs, [[4, true]]);
  assertEquals(dev.read(IIR, 1), 0xc4);
  assertEquals(dev.read(THR, 1), 0x61);
  assert(level());
  assertEquals(dev.read(THR, 1), 0x62);
  assertEquals(irqs, [[4, true], [4, false]]);
  assertEquals(dev.read(LSR, 1) & 0x01, 0);
  dev.write(IER, 1, 0);
  dev.enqueueInput(bytes("c"));
  assert(!level());
  dev.write(IER, 1, 0x01);
  assert(level());
  assertEquals(dev.read(THR, 1), 0x63);
  assert(!level());
});

Deno.test("UART interrupt identification honours priorities and THRE acknowledgement", () => {
  const { dev, level } = uart();
  dev.write(IER, 1, 0x0f);
  assertEquals(dev.read(IIR, 1), 0x02); // enabling ETBEI with THR empty raises THRE
  assertEquals(dev.read(IIR, 1), 0x01); // reading IIR acknowledged it
  assert(!level());
  dev.write(THR, 1, 0x41);
  dev.enqueueInput(new Uint8Array(SERIAL_RX_CAPACITY + 1));
  assertEquals(dev.read(IIR, 1), 0x06); // overrun outranks data, which outranks THRE
  assertEquals(dev.read(LSR, 1), 0x63); // OE | DR | THRE | TEMT; reading clears OE
  assertEquals(dev.read(IIR, 1), 0x04);
  for (let i = 0; i < SERIAL_RX_CAPACITY; i++) dev.read(THR, 1);
  assertEquals(dev.read(IIR, 1), 0x02);
  dev.write(MCR, 1, 0x10); // loopback changes DSR/CTS/DCD: a modem status change
  assertEquals(dev.read(IIR, 1), 0x00);
  assertEquals(dev.read(MSR, 1) & 0x0f, 0x0b);
  assertEquals(dev.read(IIR, 1), 0x01);
  assert(!level());
});

Deno.test("UART receive FIFO drops input beyond its capacity", () => {
  const { dev } = uart();
  assertEquals(dev.enqueueInput(new Uint8Array(SERIAL_RX_CAPACITY - 1)), SERIAL_RX_CAPACITY - 1);
  assertEquals(dev.enqueueInput(bytes("xyz")), 1);
  assertEquals(dev.read(LSR, 1) & 0x02, 0x02);
  for (let i = 0; i < SERIAL_RX_CAPACITY - 1; i++) dev.read(THR, 1);
  assertEquals(dev.read(THR, 1), 0x78);
  assertEquals(dev.read(LSR, 1), 0x60);
});

Deno.test("UART loopback returns transmitted bytes and mirrors MCR onto MSR", () => {
  const { dev, out } = uart();
  assertEquals(dev.read(MSR, 1), 0xb0);
  dev.write(MCR, 1, 0x1a); // loop, RTS, OUT2
  assertEquals(dev.read(MSR, 1), 0x92); // CTS | DCD, DSR dropped
  assertEquals(dev.read(MSR, 1), 0x90);
  dev.write(MCR, 1, 0x15); // loop, DTR, OUT1
  assertEquals(dev.read(MSR, 1), 0x6b); // DSR | RI; CTS, DSR and DCD changed
  dev.write(MCR, 1, 0x10);
  assertEquals(dev.read(MSR, 1), 0x06); // RI's trailing edge and DSR
  assertEquals(dev.enqueueInput(bytes("ignored")), 0);
  dev.write(THR, 1, 0x5a);
  assertEquals(out, []);
  assertEquals(dev.read(LSR, 1), 0x61);
  assertEquals(dev.read(THR, 1), 0x5a);
  dev.write(MCR, 1, 0x0b);
  assertEquals(dev.read(MSR, 1), 0xb0 | 0x0b);
  dev.write(THR, 1, 0x5a);
  assertEquals(out, [0x5a]);
});

Deno.test("UART save and restore preserve pending input and registers", () => {
  const a = uart();
  a.dev.write(FCR, 1, 0x01);
  a.dev.write(LCR, 1, 0x83);
  a.dev.write(THR, 1, 0x03);
  a.dev.write(LCR, 1, 0x1b);
  a.dev.write(MCR, 1, 0x0b);
  a.dev.write(SCR, 1, 0xa5);
  a.dev.write(IER, 1, 0x07);
  a.dev.enqueueInput(bytes("login: root\n"));
  a.dev.read(THR, 1);
  a.dev.read(MSR, 1);
  const state = structuredClone(a.dev.save());
  assertEquals(new TextDecoder().decode(state.rx), "ogin: root\n");
  assertEquals(state.thrInterruptPending, true);

  const b = uart((args) => Serial16550.restore(args, state));
  assertEquals(b.irqs, [[4, true]]); // the restored line is driven again
  assertEquals(b.dev.save(), a.dev.save());
  a.irqs.length = 0;
  b.irqs.length = 0;
  const run = (d: Serial16550) => {
    const reads: number[] = [];
    for (let port = COM1; port < COM1 + 8; port++) reads.push(d.read(port, 1));
    d.write(THR, 1, 0x21);
    for (let i = 0; i < 12; i++) reads.push(d.read(IIR, 1), d.read(THR, 1), d.read(LSR, 1));
    d.write(LCR, 1, 0x80);
    reads.push(d.read(THR, 1), d.read(IER, 1));
    return reads;
  };
  assertEquals(run(b.dev), run(a.dev));
  assertEquals(b.out, a.out);
  assertEquals(b.irqs, a.irqs);
  assertEquals(b.dev.save(), a.dev.save());
});

Deno.test("UART restore rejects malformed state", () => {
  const state = new Serial16550({ setIrq: () => {}, output: () => {} }).save();
  const args = { setIrq: () => {}, output: () => {} };
  assertThrows(() => Serial16550.restore(args, { ...state, lcr: 0x100 }), Error, "bad lcr");
  const rx = new Uint8Array(SERIAL_RX_CAPACITY + 1);
  assertThrows(() => Serial16550.restore(args, { ...state, rx }), Error, "bad rx");
});

Deno.test("i8042 command 0xFE and output port bit 0 reset the CPU", () => {
  let resets = 0;
  const kbc = new I8042({ onReset: () => resets++ });
  kbc.write(0x64, 1, 0xfe);
  assertEquals(resets, 1);
  kbc.write(0x64, 1, 0xd1);
  kbc.write(0x60, 1, 0x03); // A20 on, reset line high: no reset
  assertEquals(resets, 1);
  kbc.write(0x64, 1, 0xd0);
  assertEquals(kbc.read(0x60, 1), 0x03);
  kbc.write(0x64, 1, 0xd1);
  kbc.write(0x60, 1, 0x02);
  assertEquals(resets, 2);
});

Deno.test("i8042 self-test answers 0x55 and the command byte reads back", () => {
  const kbc = new I8042({ onReset: () => {} });
  assertEquals(kbc.read(0x64, 1) & 0x05, 0x04); // output buffer empty, system flag set
  kbc.write(0x64, 1, 0xaa);
  assertEquals(kbc.read(0x64, 1) & 0x01, 0x01);
  assertEquals(kbc.read(0x60, 1), 0x55);
  assertEquals(kbc.read(0x64, 1) & 0x01, 0);
  kbc.write(0x64, 1, 0x60);
  kbc.write(0x60, 1, 0x61);
  kbc.write(0x64, 1, 0x20);
  assertEquals(kbc.read(0x60, 1), 0x61);
  assertEquals(kbc.read(0x64, 1) & 0x04, 0); // the system flag follows command byte bit 2
});

Deno.test("i8042 save and restore keep the pending output and command", () => {
  let resets = 0;
  const kbc = new I8042({ onReset: () => resets++ });
  kbc.write(0x64, 1, 0x20);
  const pendingRead = I8042.restore({ onReset: () => {} }, structuredClone(kbc.save()));
  assertEquals(pendingRead.read(0x64, 1) & 0x01, 0x01);
  assertEquals(pendingRead.read(0x60, 1), 0x05);
  kbc.write(0x64, 1, 0xd1);
  const pendingData = I8042.restore({ onReset: () => resets++ }, structuredClone(kbc.save()));
  pendingData.write(0x60, 1, 0x00);
  assertEquals(resets, 1);
  assertThrows(() => I8042.restore({ onReset: () => {} }, { ...kbc.save(), status: -1 }));
});

const T0 = Date.UTC(2024, 1, 29, 13, 45, 56); // a Thursday

/** Reads CMOS register `reg` (with the NMI-disable bit set, which must not matter). */
function cmosRead(c: Cmos, reg: number): number {
  c.write(0x70, 1, 0x80 | reg);
  return c.read(0x71, 1);
}

function cmosWrite(c: Cmos, reg: number, value: number): void {
  c.write(0x70, 1, reg);
  c.write(0x71, 1, value);
}

const timeRegs = [0x00, 0x02, 0x04, 0x06, 0x07, 0x08, 0x09, 0x32];
const readTime = (c: Cmos) => timeRegs.map((r) => cmosRead(c, r));

Deno.test("CMOS reports time in BCD by default and in binary when status B says so", () => {
  const c = new Cmos({ memSize: 512 << 20, now: () => T0 });
  assertEquals(readTime(c), [0x56, 0x45, 0x13, 0x05, 0x29, 0x02, 0x24, 0x20]);
  assertEquals([0x0a, 0x0b, 0x0d].map((r) => cmosRead(c, r)), [0x26, 0x02, 0x80]);
  cmosWrite(c, 0x0b, 0x04); // binary; 12-hour mode is refused
  assertEquals(cmosRead(c, 0x0b), 0x06);
  assertEquals(readTime(c), [56, 45, 13, 5, 29, 2, 24, 20]);
  assertEquals(c.read(0x70, 1), 0xff);
});

Deno.test("CMOS memory size registers describe 512 MiB and 6 GiB", () => {
  const regs = [0x15, 0x16, 0x17, 0x18, 0x30, 0x31, 0x34, 0x35, 0x5b, 0x5c, 0x5d];
  const small = new Cmos({ memSize: 512 * 2 ** 20 });
  assertEquals(regs.map((r) => cmosRead(small, r)), [
    0x80,
    0x02,
    0x00,
    0xfc,
    0x00,
    0xfc,
    0x00,
    0x1f,
    0x00,
    0x00,
    0x00,
  ]);
  const big = new Cmos({ memSize: 6 * 2 ** 30 });
  assertEquals(regs.map((r) => cmosRead(big, r)), [
    0x80,
    0x02,
    0x00,
    0xfc,
    0x00,
    0xfc,
    0x00,
    0xff,
    0x00,
    0x80,
    0x00,
  ]);
  const holed = new Cmos({ memSize: 6 * 2 ** 30, ramBelow4g: 3 * 2 ** 30 });
  assertEquals(regs.slice(6).map((r) => cmosRead(holed, r)), [0x00, 0xbf, 0x00, 0xc0, 0x00]);
});

Deno.test("CMOS guest writes move its clock, which keeps running", () => {
  let host = T0;
  const c = new Cmos({ memSize: 1 << 30, now: () => host });
  cmosWrite(c, 0x04, 0x08);
  host += 4000;
  assertEquals(readTime(c), [0x00, 0x46, 0x08, 0x05, 0x29, 0x02, 0x24, 0x20]);
  cmosWrite(c, 0x0b, 0x82); // SET: the clock holds while the guest writes every field
  for (const [r, v] of [[0x00, 0x06], [0x02, 0x05], [0x04, 0x04], [0x07, 0x03], [0x08, 0x02]]) {
    cmosWrite(c, r, v);
  }
  cmosWrite(c, 0x09, 0x01);
  host += 5000;
  assertEquals(cmosRead(c, 0x00), 0x06);
  cmosWrite(c, 0x0b, 0x02);
  host += 1000;
  assertEquals(readTime(c), [0x07, 0x05, 0x04, 0x07, 0x03, 0x02, 0x01, 0x20]); // a Saturday
});

Deno.test("CMOS save and restore keep the guest clock continuous", () => {
  let host = T0;
  const c = new Cmos({ memSize: 1 << 30, now: () => host });
  cmosWrite(c, 0x09, 0x99);
  cmosWrite(c, 0x32, 0x19);
  host += 7000;
  const before = readTime(c);
  assertEquals(before, [0x03, 0x46, 0x13, 0x02, 0x01, 0x03, 0x99, 0x19]); // Feb 29 2099 wrapped
  const state = structuredClone(c.save());
  assertEquals(state.index, 0x32);
  assertEquals(state.nmiDisabled, true);
  // The VM sat saved for an hour; the VMM's `now` leaves that pause out of guest time.
  const paused = 3_600_000;
  host += paused;
  const r = Cmos.restore({ memSize: 1 << 30, now: () => host - paused }, state);
  assertEquals(readTime(r), before);
  host += 2000;
  assertEquals(cmosRead(r, 0x00), 0x05);
  assertEquals(r.save().offsetMs, state.offsetMs);
  assertThrows(() => Cmos.restore({ memSize: 1 }, { ...state, ram: new Uint8Array(64) }));
});

Deno.test("PioBus routes to the devices and rejects overlapping ports", () => {
  const out: number[] = [];
  const serialArgs = { setIrq: () => {}, output: (b: Uint8Array) => out.push(...b) };
  const bus = new PioBus();
  bus.add(new Serial16550(serialArgs));
  bus.add(new I8042({ onReset: () => {} }));
  bus.add(new Cmos({ memSize: 512 << 20, now: () => T0 }));
  bus.write(THR, 1, 0x4f);
  assertEquals(out, [0x4f]);
  assertEquals(bus.read(0x64, 1), 0x14);
  bus.write(0x70, 1, 0x04);
  assertEquals(bus.read(0x71, 1), 0x13);
  assertEquals(bus.read(0x3f7, 1), 0xff);
  assertEquals(Object.keys(bus.save()), ["com1", "i8042", "cmos"]);
  assertEquals(bus.claimedPorts().length, 8 + 2 + 2);
  assertThrows(
    () => bus.add(new Serial16550({ ...serialArgs, name: "com1b", base: 0x3fc })),
    Error,
    "port 0x3fc claimed by com1 and com1b",
  );
  assertThrows(() => bus.add(new I8042({ name: "kbc2", onReset: () => {} })), Error, "0x60");
});
