/**
 * The memstamp guest: lays out its memory and CPU state, and drives it through guest memory (the
 * config page's command word, the per-vCPU status blocks) without stopping it.
 */
import {
  LAPIC_BUS_HZ,
  LAPIC_REG,
  type Registers,
  type SpecialRegisters,
} from "../../../accel/cpu_state.ts";
import { PAGE_SIZE } from "../../../accel/accel.ts";
import type { GuestMemory } from "../../../memory/guest_memory.ts";
import { CODE_BASE, CODE_BASE64, SYMBOLS } from "./code.ts";
import {
  CFG,
  CMD,
  dataRegion,
  LAYOUT,
  MAGIC,
  MAX_MEM,
  MAX_VCPUS,
  MIN_MEM,
  PHASE,
  SEL,
  STATUS,
  statusAddr,
  TSS_LIMIT,
  userStackTop,
  VECTOR,
  writeGdt,
  writeIdt,
  writePageTables,
  writeTss,
} from "./layout.ts";
import { sleep } from "../../../rpc/deadline.ts";

/** How the writer picks the next page of its working set. */
export type AccessPattern = "seq" | "random" | "hotcold";
const PATTERNS: Record<AccessPattern, number> = { seq: 0, random: 1, hotcold: 2 };

/** memstamp's knobs. */
export interface MemstampOptions {
  /** Guest RAM in bytes. */
  memSize: number;
  /** vCPUs; each stamps its own share of the pages. */
  vcpus: number;
  /** Working-set bytes per vCPU the writer keeps rewriting (default: the whole share). */
  workingSet?: number;
  /** Access pattern (default random). */
  pattern?: AccessPattern;
  /** Page stride between consecutive working-set pages: 1 packs it, larger spreads it out. */
  stride?: number;
  /** Pages written between progress reports on the I/O port. */
  reportInterval?: number;
  /** Busy-loop iterations after each page write (0: as fast as it can). */
  delay?: number;
  /** LAPIC timer frequency in Hz (0: no timer). */
  timerHz?: number;
}

/** A guest option is out of range; the message names it. */
export class MemstampConfigError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "MemstampConfigError";
  }
}

/** One vCPU's progress as the guest reports it in its status block. */
export interface MemstampStatus {
  /** 0 init, 1 stamping, 2 running, 3 verifying. */
  phase: number;
  /** Pages rewritten since start. */
  written: bigint;
  /** LAPIC timer ticks counted by the ring-0 handler. */
  ticks: bigint;
  /** Pages stamped by the initial pass. */
  stamped: bigint;
  /** First gfn of this vCPU's share. */
  start: bigint;
  /** Pages in this vCPU's share. */
  count: bigint;
}

/** The first bad page verification found. */
export interface BadPage {
  /** vCPU that found it. */
  vcpu: number;
  /** Guest frame number. */
  gfn: number;
  /** What is wrong. */
  reason: "wrong-gfn" | "stale-version" | "torn" | "lost";
  /** Expected value of the mismatching word. */
  expected: bigint;
  /** Value found. */
  found: bigint;
}

/** Result of a guest-side verification of every page. */
export interface VerifyResult {
  /** True when every page of every vCPU verified. */
  ok: boolean;
  /** Pages verified. */
  pages: number;
  /** The first bad page, when not ok. */
  bad?: BadPage;
}

const REASONS: BadPage["reason"][] = ["wrong-gfn", "wrong-gfn", "stale-version", "torn", "lost"];

/** Decodes the embedded machine code. */
function code(): Uint8Array {
  return Uint8Array.from(atob(CODE_BASE64), (c) => c.charCodeAt(0));
}

/** Checks options and fills defaults. */
export function resolveOptions(o: MemstampOptions): Required<MemstampOptions> {
  if (o.memSize < MIN_MEM || o.memSize > MAX_MEM) {
    throw new MemstampConfigError(
      `memstamp needs --mem between ${MIN_MEM >> 20} MiB and ${MAX_MEM >> 20} MiB, got ${
        Math.round(o.memSize / 1048576)
      } MiB`,
    );
  }
  if (!Number.isInteger(o.vcpus) || o.vcpus < 1 || o.vcpus > MAX_VCPUS) {
    throw new MemstampConfigError(`--vcpus must be 1..${MAX_VCPUS}, got ${o.vcpus}`);
  }
  const share = Math.floor(dataRegion(o.memSize).pages / o.vcpus) * PAGE_SIZE;
  return {
    memSize: o.memSize,
    vcpus: o.vcpus,
    workingSet: Math.min(o.workingSet ?? share, share),
    pattern: o.pattern ?? "random",
    stride: o.stride ?? 1,
    reportInterval: o.reportInterval ?? 65536,
    delay: o.delay ?? 0,
    timerHz: o.timerHz ?? 100,
  };
}

/** Writes code, system structures and config into fresh guest memory; returns the GDT limit. */
export function setupMemory(mem: GuestMemory, opts: Required<MemstampOptions>): number {
  const ram = mem.view(0, LAYOUT.TABLE);
  ram.set(code(), CODE_BASE);
  const gdtLimit = writeGdt(ram, opts.vcpus);
  writeIdt(ram, {
    faultStubs: SYMBOLS.fault_stubs,
    timer: SYMBOLS.timer_handler,
    spurious: SYMBOLS.spurious_handler,
  });
  writeTss(ram, opts.vcpus);
  writePageTables(mem.view(0, LAYOUT.TABLE), opts.memSize);
  const { baseGfn, pages } = dataRegion(opts.memSize);
  const cfg = mem.u64(LAYOUT.CONFIG, 16);
  cfg[CFG.MAGIC / 8] = MAGIC;
  cfg[CFG.NVCPUS / 8] = BigInt(opts.vcpus);
  cfg[CFG.TABLE / 8] = BigInt(LAYOUT.TABLE);
  cfg[CFG.BASEGFN / 8] = BigInt(baseGfn);
  cfg[CFG.PAGES / 8] = BigInt(pages);
  cfg[CFG.WS / 8] = BigInt(Math.max(1, Math.floor(opts.workingSet / PAGE_SIZE)));
  cfg[CFG.PATTERN / 8] = BigInt(PATTERNS[opts.pattern]);
  cfg[CFG.STRIDE / 8] = BigInt(opts.stride);
  cfg[CFG.INTERVAL / 8] = BigInt(opts.reportInterval);
  cfg[CFG.DELAY / 8] = BigInt(opts.delay);
  cfg[CFG.NONCE / 8] = crypto.getRandomValues(new BigUint64Array(1))[0];
  return gdtLimit;
}

/** Initial general-purpose registers of vCPU `i`: ring-3 entry with IOPL 3 and interrupts on. */
export function initialRegs(i: number, base: Registers): Registers {
  return {
    ...base,
    rip: BigInt(SYMBOLS.user_entry),
    rsp: BigInt(userStackTop(i)),
    rdi: BigInt(i),
    rsi: BigInt(statusAddr(i)),
    rflags: 0x3202n,
  };
}

/** Initial special registers of vCPU `i`: long mode, paging, user segments, its own TSS. */
export function initialSregs(
  i: number,
  base: SpecialRegisters,
  gdtLimit: number,
): SpecialRegisters {
  const flat = { base: 0n, limit: 0xffffffff, present: 1, s: 1, g: 1, avl: 0, unusable: 0 };
  const code = { ...flat, selector: SEL.UCODE, type: 0xb, dpl: 3, db: 0, l: 1 };
  const data = { ...flat, selector: SEL.UDATA, type: 0x3, dpl: 3, db: 1, l: 0 };
  return {
    ...base,
    cs: code,
    ds: data,
    es: data,
    fs: data,
    gs: data,
    ss: data,
    tr: {
      base: BigInt(LAYOUT.TSS + i * LAYOUT.TSS_STRIDE),
      limit: TSS_LIMIT,
      selector: SEL.tss(i),
      type: 0xb,
      present: 1,
      dpl: 0,
      db: 0,
      s: 0,
      l: 0,
      g: 0,
      avl: 0,
      unusable: 0,
    },
    ldt: { ...base.ldt, unusable: 1, present: 0 },
    gdt: { base: BigInt(LAYOUT.GDT), limit: gdtLimit },
    idt: { base: BigInt(LAYOUT.IDT), limit: 256 * 16 - 1 },
    cr0: 0x80050033n,
    cr3: BigInt(LAYOUT.PML4),
    cr4: 0x620n,
    efer: 0x500n,
    apic_base: 0xfee00800n | (i === 0 ? 0x100n : 0n),
  };
}

/** LAPIC registers for the periodic timer at `hz` (the neutral APIC bus runs at 1 GHz). */
export function initialLapic(lapic: Uint8Array, hz: number): Uint8Array {
  const out = new Uint8Array(lapic);
  const dv = new DataView(out.buffer);
  dv.setUint32(LAPIC_REG.SVR, 0x100 | VECTOR.SPURIOUS, true); // software enable
  dv.setUint32(LAPIC_REG.LVT_LINT0, 0x10000, true); // masked
  dv.setUint32(LAPIC_REG.LVT_LINT1, 0x10000, true); // masked
  dv.setUint32(LAPIC_REG.TIMER_DIVIDE, 0xb, true); // divide by 1
  if (hz > 0) {
    const count = Math.round(LAPIC_BUS_HZ / hz);
    dv.setUint32(LAPIC_REG.LVT_TIMER, 0x20000 | VECTOR.TIMER, true); // periodic
    dv.setUint32(LAPIC_REG.TIMER_INITIAL, count, true);
    dv.setUint32(LAPIC_REG.TIMER_CURRENT, count, true);
  } else {
    dv.setUint32(LAPIC_REG.LVT_TIMER, 0x10000, true);
  }
  return out;
}

/** Reads and drives a memstamp guest through its memory. */
export class MemstampControl {
  constructor(private readonly mem: GuestMemory) {}

  /** Number of vCPUs the guest was set up for. */
  get vcpus(): number {
    return Number(this.mem.u64(LAYOUT.CONFIG, 16)[CFG.NVCPUS / 8]);
  }

  /** The RAM-only boot nonce: differs between a reboot and a restore. */
  get nonce(): bigint {
    return this.mem.u64(LAYOUT.CONFIG, 16)[CFG.NONCE / 8];
  }

  /** True if guest memory holds a memstamp config. */
  isMemstamp(): boolean {
    return this.mem.u64(LAYOUT.CONFIG, 1)[0] === MAGIC;
  }

  /** vCPU `i`'s status block. */
  status(i: number): MemstampStatus {
    const s = this.mem.u64(statusAddr(i), 32);
    return {
      phase: Number(s[STATUS.PHASE / 8]),
      written: s[STATUS.WRITTEN / 8],
      ticks: s[STATUS.TICKS / 8],
      stamped: s[STATUS.STAMPED / 8],
      start: s[STATUS.START / 8],
      count: s[STATUS.COUNT / 8],
    };
  }

  /** Every vCPU's status. */
  statuses(): MemstampStatus[] {
    return Array.from({ length: this.vcpus }, (_, i) => this.status(i));
  }

  /** Resolves when every vCPU finished the initial stamping pass. */
  async waitStamped(timeoutMs: number): Promise<void> {
    await this.waitFor(
      () => this.statuses().every((s) => s.phase >= PHASE.RUNNING),
      timeoutMs,
      "the initial stamping pass",
    );
  }

  /** Asks the running guest to verify every page; resolves with the first bad page, if any. */
  async verify(timeoutMs = 120_000): Promise<VerifyResult> {
    const cfg = this.mem.u64(LAYOUT.CONFIG, 16);
    const seq = cfg[CFG.CMDSEQ / 8] + 1n;
    // No dirty log sees this write, and a copy-on-write checkpoint may have protected the page.
    this.mem.prepareWrite(LAYOUT.CONFIG, 16 * 8);
    cfg[CFG.CMD / 8] = BigInt(CMD.VERIFY);
    Atomics.store(cfg as unknown as BigInt64Array, CFG.CMDSEQ / 8, seq);
    const n = this.vcpus;
    const done = () =>
      Array.from(
        { length: n },
        (_, i) => this.mem.u64(statusAddr(i), 32)[STATUS.CMDSEQ / 8] === seq,
      ).every((x) => x);
    await this.waitFor(done, timeoutMs, "verification (is the guest running?)");
    let pages = 0;
    for (let i = 0; i < n; i++) {
      const s = this.mem.u64(statusAddr(i), 32);
      pages += Number(s[STATUS.VERIFIED / 8]);
      if (s[STATUS.RESULT / 8] !== 0n) {
        return {
          ok: false,
          pages,
          bad: {
            vcpu: i,
            gfn: Number(s[STATUS.BADGFN / 8]),
            reason: REASONS[Number(s[STATUS.REASON / 8])] ?? "torn",
            expected: s[STATUS.EXPECT / 8],
            found: s[STATUS.FOUND / 8],
          },
        };
      }
    }
    return { ok: true, pages };
  }

  private async waitFor(cond: () => boolean, timeoutMs: number, what: string): Promise<void> {
    const deadline = performance.now() + timeoutMs;
    while (!cond()) {
      if (performance.now() > deadline) {
        throw new Error(`memstamp: timed out after ${timeoutMs} ms waiting for ${what}`);
      }
      await sleep(2);
    }
  }
}
