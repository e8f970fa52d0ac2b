/**
 * One emulated x86-64 CPU inside its vCPU Worker: a Unicorn engine over guest RAM with the shim's
 * hooks, loading and capturing the neutral state, and delivering interrupts the way the hardware
 * would (Unicorn has no APIC and never goes through the IDT).
 *
 * Unicorn 2.0.1 cannot set the CPL or a segment's hidden part directly, so privilege changes go
 * through real instructions: a ring-0 context is saved once; ring 3 is entered by an `iretq` stub
 * on an engine-owned page; an interrupt restores the ring-0 context, pushes the hardware's frame
 * on TSS.RSP0 and jumps to the IDT gate. Paging translation is ignored by 2.0.1 (virtual = physical)
 * while permissions are checked; guests here map memory 1:1.
 */
import {
  EMU_EXIT,
  type EMU_IO_CALLBACK,
  EMU_LAPIC_BASE,
  type EmuShim,
} from "../../ffi/emu_shim.ts";
import * as libc from "../../ffi/libc.ts";
import {
  UC_ERR,
  UC_PROT,
  ucStrerror,
  type UnicornContext,
  UnicornEngine,
  X86_REG as R,
} from "../../ffi/unicorn.ts";
import {
  type CpuState,
  LAPIC_PAGE_BYTES,
  MP_STATE,
  type Registers,
  withLapicId,
} from "../cpu_state.ts";
import { segmentFlags, segmentFromFlags, segmentFromGdt } from "./descriptors.ts";
import { LapicTimer } from "./lapic_timer.ts";

/** Engine-owned page for the `iretq` stub and its frame, inside the APIC's 2 MiB mapping. */
const STUB_PAGE = EMU_LAPIC_BASE + 0x1000n;
const STUB_FRAME = STUB_PAGE + 0x800n;
const IRETQ = new Uint8Array([0x48, 0xcf]);
/** An address no guest code runs at: `uc_emu_start` only stops through the shim. */
const NEVER = 0xffff_ffff_ffff_f000n;
const RFLAGS_IF = 0x200n;
const MSR_EFER = 0xc0000080;
/** MSRs the emulated CPU saves: SYSENTER, PAT and the SYSCALL targets (FS/GS bases are in sregs). */
const EMU_MSRS = [0x174, 0x175, 0x176, 0x277, 0xc0000081, 0xc0000082, 0xc0000083, 0xc0000084];
const GPRS: Array<[keyof Registers, number]> = [
  ["rax", R.RAX],
  ["rbx", R.RBX],
  ["rcx", R.RCX],
  ["rdx", R.RDX],
  ["rsi", R.RSI],
  ["rdi", R.RDI],
  ["rbp", R.RBP],
  ["r8", R.R8],
  ["r9", R.R9],
  ["r10", R.R10],
  ["r11", R.R11],
  ["r12", R.R12],
  ["r13", R.R13],
  ["r14", R.R14],
  ["r15", R.R15],
];
const EXCEPTIONS = [
  "#DE",
  "#DB",
  "NMI",
  "#BP",
  "#OF",
  "#BR",
  "#UD",
  "#NM",
  "#DF",
  "",
  "#TS",
  "#NP",
  "#SS",
  "#GP",
  "#PF",
  "",
  "#MF",
  "#AC",
  "#MC",
  "#XM",
];

/** What one run of guest code ended with. */
export type EmuStop =
  | { kind: "kick" }
  | { kind: "timer" }
  | { kind: "halt" }
  | { kind: "fault"; reason: string };

/** What a CPU needs from its Worker's start message. */
export interface EmuCpuArgs {
  /** The shim's functions. */
  shim: EmuShim;
  /** Host address and size of guest RAM. */
  ramAddr: bigint;
  /** Bytes of guest RAM. */
  ramSize: number;
  /** The shim state the VM's vCPUs share. */
  vmAddr: bigint;
  /** The kick word another thread sets to stop the CPU at its next block. */
  kick: SharedArrayBuffer;
  /** Ports devices claim (accesses go to `io`). */
  claimedPorts: number[];
  /** The port-access callback. */
  io: Deno.UnsafeCallback<typeof EMU_IO_CALLBACK>;
}

/** An emulated CPU; lives and runs on one Worker thread. */
export class EmuCpu {
  #uc: UnicornEngine;
  #shim: EmuShim;
  #v: Deno.PointerObject;
  #ram: Uint8Array<ArrayBuffer>;
  #vm: Deno.PointerObject;
  #ring0?: UnicornContext;
  #kick: Int32Array;
  #lapic: Uint8Array<ArrayBuffer>;
  /** The LAPIC timer. */
  readonly timer: LapicTimer;
  #loaded?: CpuState;

  constructor(a: EmuCpuArgs) {
    this.#shim = a.shim;
    this.#uc = UnicornEngine.open();
    this.#ram = libc.bytesAt(libc.ptrOf(a.ramAddr), a.ramSize);
    this.#vm = libc.ptrOf(a.vmAddr);
    this.#uc.mapPtr(0n, a.ramSize, UC_PROT.ALL, libc.ptrOf(a.ramAddr));
    this.#uc.map(STUB_PAGE, 0x1000, UC_PROT.ALL);
    this.#uc.write(STUB_PAGE, IRETQ);
    const claimed = new Uint8Array(65536);
    for (const p of a.claimedPorts) claimed[p] = 1;
    this.#kick = new Int32Array(a.kick);
    const v = a.shim.dcres_emu_attach(
      this.#uc.handle,
      Deno.UnsafePointer.of(this.#kick),
      this.#vm,
      claimed,
      a.io.pointer,
    );
    if (!v) throw new Error("the emulated CPU's shim could not install its hooks");
    this.#v = v;
    this.#lapic = libc.bytesAt(a.shim.dcres_emu_lapic(v)!, LAPIC_PAGE_BYTES);
    this.timer = new LapicTimer(this.#lapic);
  }

  /** Clears a kick before the run state is read, so a later kick is never lost. */
  clearKick(): void {
    Atomics.store(this.#kick, 0, 0);
  }

  /** The shim's monotonic clock. */
  now(): bigint {
    return this.#shim.dcres_emu_now_ns();
  }

  #read(addr: bigint, len: number): Uint8Array {
    const a = Number(addr);
    if (a < 0 || a + len > this.#ram.length) {
      throw new Error(`the emulated CPU read outside guest RAM at 0x${addr.toString(16)}`);
    }
    return this.#ram.subarray(a, a + len);
  }

  #writeGuest(addr: bigint, words: bigint[]): void {
    const a = Number(addr);
    if (a < 0 || a + words.length * 8 > this.#ram.length) {
      throw new Error(`the interrupt frame at 0x${addr.toString(16)} is outside guest RAM`);
    }
    // Through the shim's gate first, as a guest store would: dirty, and copied aside during cow.
    const first = a >>> 12, last = (a + words.length * 8 - 1) >>> 12;
    this.#shim.dcres_emu_before_write(this.#vm, BigInt(first), BigInt(last - first + 1));
    const dv = new DataView(this.#ram.buffer, this.#ram.byteOffset + a, words.length * 8);
    words.forEach((w, i) => dv.setBigUint64(i * 8, BigInt.asUintN(64, w), true));
    // Marked again now that the words landed: a harvest in between took the first mark.
    this.#shim.dcres_emu_after_write(this.#vm, BigInt(first), BigInt(last - first + 1));
  }

  #setSystem(s: CpuState): void {
    const sr = s.sregs;
    const uc = this.#uc;
    uc.setReg(R.CR4, sr.cr4);
    uc.setReg(R.CR3, sr.cr3);
    uc.setMsr(MSR_EFER, sr.efer);
    uc.setReg(R.CR0, sr.cr0);
    uc.setReg(R.CR2, sr.cr2);
    uc.setMmr(R.GDTR, { selector: 0, base: sr.gdt.base, limit: sr.gdt.limit, flags: 0 });
    uc.setMmr(R.IDTR, { selector: 0, base: sr.idt.base, limit: sr.idt.limit, flags: 0 });
    for (const [reg, seg] of [[R.TR, sr.tr], [R.LDTR, sr.ldt]] as const) {
      uc.setMmr(reg, {
        selector: seg.selector,
        base: seg.base,
        limit: seg.limit,
        flags: segmentFlags(seg),
      });
    }
  }

  /** Installs a state: system registers, the privilege level through real instructions, GPRs. */
  load(s: CpuState): void {
    const uc = this.#uc;
    this.#setSystem(s);
    this.#ring0 ??= uc.saveContext();
    uc.restoreContext(this.#ring0);
    this.#setSystem(s);
    const r = s.regs;
    if ((s.sregs.cs.selector & 3) !== 0) {
      const frame = [
        r.rip,
        BigInt(s.sregs.cs.selector),
        r.rflags,
        r.rsp,
        BigInt(s.sregs.ss.selector),
      ];
      const bytes = new Uint8Array(40);
      const dv = new DataView(bytes.buffer);
      frame.forEach((w, i) => dv.setBigUint64(i * 8, BigInt.asUintN(64, w), true));
      uc.write(STUB_FRAME, bytes);
      uc.setReg(R.RSP, STUB_FRAME);
      const err = uc.start(STUB_PAGE, r.rip);
      this.#shim.dcres_emu_take_exit(this.#v);
      if (err !== UC_ERR.OK || uc.reg(R.RIP) !== r.rip) {
        throw new Error(
          `the emulated CPU could not enter ring ${s.sregs.cs.selector & 3} at 0x${
            r.rip.toString(16)
          }: ${err ? ucStrerror(err) : "stopped elsewhere"}`,
        );
      }
    } else {
      uc.setReg(R.CS, BigInt(s.sregs.cs.selector));
      uc.setReg(R.SS, BigInt(s.sregs.ss.selector));
      uc.setReg(R.RSP, r.rsp);
      uc.setReg(R.RIP, r.rip);
      uc.setReg(R.RFLAGS, r.rflags);
    }
    for (const [name, id] of GPRS) uc.setReg(id, r[name]);
    uc.setReg(R.FS_BASE, s.sregs.fs.base);
    uc.setReg(R.GS_BASE, s.sregs.gs.base);
    for (const m of s.msrs) if (EMU_MSRS.includes(m.index)) uc.setMsr(m.index, m.data);
    this.#lapic.set(s.lapic.subarray(0, LAPIC_PAGE_BYTES));
    this.timer.arm(this.now());
    this.#loaded = s;
  }

  /** The CPU's state in the neutral form (segments' cached parts read back from the GDT). */
  save(): CpuState {
    const uc = this.#uc;
    const regs = { rsp: uc.reg(R.RSP), rip: uc.reg(R.RIP), rflags: uc.reg(R.RFLAGS) } as Registers;
    for (const [name, id] of GPRS) regs[name] = uc.reg(id);
    const gdt = uc.mmr(R.GDTR), idt = uc.mmr(R.IDTR), tr = uc.mmr(R.TR), ldt = uc.mmr(R.LDTR);
    const seg = (id: number) =>
      segmentFromGdt(Number(uc.reg(id) & 0xffffn), gdt.base, gdt.limit, (a, n) => this.#read(a, n));
    const fs = seg(R.FS), gs = seg(R.GS);
    fs.base = uc.reg(R.FS_BASE);
    gs.base = uc.reg(R.GS_BASE);
    const base = this.#loaded;
    this.timer.saveCurrentCount(this.now());
    return {
      index: base?.index ?? 0,
      regs,
      sregs: {
        cs: seg(R.CS),
        ds: seg(R.DS),
        es: seg(R.ES),
        fs,
        gs,
        ss: seg(R.SS),
        tr: segmentFromFlags(tr.selector, tr.base, tr.limit, tr.flags),
        ldt: segmentFromFlags(ldt.selector, ldt.base, ldt.limit, ldt.flags),
        gdt: { base: gdt.base, limit: gdt.limit },
        idt: { base: idt.base, limit: idt.limit },
        cr0: uc.reg(R.CR0),
        cr2: uc.reg(R.CR2),
        cr3: uc.reg(R.CR3),
        cr4: uc.reg(R.CR4),
        cr8: 0n,
        efer: uc.msr(MSR_EFER),
        apic_base: base?.sregs.apic_base ?? 0xfee00900n,
        interrupt_bitmap: [0n, 0n, 0n, 0n],
      },
      msrs: EMU_MSRS.map((index) => ({ index, data: uc.msr(index) })),
      lapic: withLapicId(this.#lapic.slice(), base?.index ?? 0),
      mpState: MP_STATE.RUNNABLE,
    };
  }

  /**
   * Delivers `vector` as an external interrupt through its IDT gate if the guest accepts
   * interrupts now (RFLAGS.IF); returns whether it did.
   */
  deliver(vector: number): boolean {
    const uc = this.#uc;
    const rflags = uc.reg(R.RFLAGS);
    if (!(rflags & RFLAGS_IF)) return false;
    const sys = {
      cr0: uc.reg(R.CR0),
      cr2: uc.reg(R.CR2),
      cr3: uc.reg(R.CR3),
      cr4: uc.reg(R.CR4),
      efer: uc.msr(MSR_EFER),
      fsBase: uc.reg(R.FS_BASE),
      gsBase: uc.reg(R.GS_BASE),
    };
    const gdtr = uc.mmr(R.GDTR), idtr = uc.mmr(R.IDTR), tr = uc.mmr(R.TR);
    const gprs = GPRS.map(([, id]) => uc.reg(id));
    const rip = uc.reg(R.RIP), rsp = uc.reg(R.RSP);
    const cs = uc.reg(R.CS) & 0xffffn, ss = uc.reg(R.SS) & 0xffffn;
    const gate = new DataView(this.#read(idtr.base + BigInt(vector * 16), 16).slice().buffer);
    const target = BigInt(gate.getUint16(0, true)) | (BigInt(gate.getUint16(6, true)) << 16n) |
      (BigInt(gate.getUint32(8, true)) << 32n);
    const gateSelector = gate.getUint16(2, true);
    const stackTop = (cs & 3n) === 0n
      ? rsp & ~0xfn
      : new DataView(this.#read(tr.base + 4n, 8).slice().buffer).getBigUint64(0, true) & ~0xfn;
    const frame = stackTop - 40n;
    this.#writeGuest(frame, [rip, cs, rflags, rsp, ss]);
    uc.restoreContext(this.#ring0!);
    uc.setReg(R.CR4, sys.cr4);
    uc.setReg(R.CR3, sys.cr3);
    uc.setMsr(MSR_EFER, sys.efer);
    uc.setReg(R.CR0, sys.cr0);
    uc.setReg(R.CR2, sys.cr2);
    uc.setMmr(R.GDTR, gdtr);
    uc.setMmr(R.IDTR, idtr);
    uc.setMmr(R.TR, tr);
    GPRS.forEach(([, id], i) => uc.setReg(id, gprs[i]));
    uc.setReg(R.FS_BASE, sys.fsBase);
    uc.setReg(R.GS_BASE, sys.gsBase);
    uc.setReg(R.CS, BigInt(gateSelector));
    uc.setReg(R.SS, 0n);
    uc.setReg(R.RSP, frame);
    uc.setReg(R.RFLAGS, rflags & ~(RFLAGS_IF | 0x100n | 0x4000n | 0x10000n));
    uc.setReg(R.RIP, target);
    return true;
  }

  /** Runs guest code until the shim stops it; `deadline` arms the timer check (0: none). */
  run(deadline: bigint): EmuStop {
    const uc = this.#uc;
    this.#shim.dcres_emu_set_deadline(this.#v, deadline);
    const start = uc.reg(R.RIP);
    const err = uc.start(start, NEVER);
    this.#shim.dcres_emu_settle(this.#v);
    const exit = this.#shim.dcres_emu_take_exit(this.#v);
    if (exit === EMU_EXIT.EXCEPTION) {
      const vector = this.#shim.dcres_emu_exit_vector(this.#v);
      const name = EXCEPTIONS[vector]
        ? `${EXCEPTIONS[vector]} (vector ${vector})`
        : `vector ${vector}`;
      return {
        kind: "fault",
        reason: `guest exception ${name} at rip 0x${uc.reg(R.RIP).toString(16)}`,
      };
    }
    if (err === UC_ERR.INSN_INVALID) {
      return {
        kind: "fault",
        reason: `guest exception #UD (vector 6) at rip 0x${
          uc.reg(R.RIP).toString(16)
        }: an instruction the emulated CPU cannot run`,
      };
    }
    if (err !== UC_ERR.OK) {
      return {
        kind: "fault",
        reason: `the emulated CPU stopped at rip 0x${uc.reg(R.RIP).toString(16)}: ${
          ucStrerror(err)
        }`,
      };
    }
    if (exit === EMU_EXIT.KICK) return { kind: "kick" };
    if (exit === EMU_EXIT.TIMER) return { kind: "timer" };
    if (exit === EMU_EXIT.LAPIC) {
      this.timer.arm(this.now());
      return { kind: "kick" };
    }
    return { kind: "halt" };
  }

  /** True when the guest accepts interrupts. */
  get interruptsEnabled(): boolean {
    return (this.#uc.reg(R.RFLAGS) & RFLAGS_IF) !== 0n;
  }

  /** Releases the engine and the shim state. */
  close(): void {
    this.#ring0?.free();
    this.#uc.close();
    this.#shim.dcres_emu_detach(this.#v);
  }
}
