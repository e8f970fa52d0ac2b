/**
 * The neutral, documented form of x86-64 vCPU and platform state that every accelerator saves and
 * restores (docs/FORMAT.md section 12). Field names follow the architecture (and the names KVM
 * gives them, so checkpoints written before accelerators existed read unchanged); fields only one
 * accelerator can produce are optional, and the other one leaves them at their reset values.
 */

/** General-purpose registers, RIP and RFLAGS. */
export interface Registers {
  /** RAX. */
  rax: bigint;
  /** RBX. */
  rbx: bigint;
  /** RCX. */
  rcx: bigint;
  /** RDX. */
  rdx: bigint;
  /** RSI. */
  rsi: bigint;
  /** RDI. */
  rdi: bigint;
  /** RSP. */
  rsp: bigint;
  /** RBP. */
  rbp: bigint;
  /** R8. */
  r8: bigint;
  /** R9. */
  r9: bigint;
  /** R10. */
  r10: bigint;
  /** R11. */
  r11: bigint;
  /** R12. */
  r12: bigint;
  /** R13. */
  r13: bigint;
  /** R14. */
  r14: bigint;
  /** R15. */
  r15: bigint;
  /** Instruction pointer. */
  rip: bigint;
  /** Flags. */
  rflags: bigint;
}

/** A segment register: its selector and the descriptor the CPU cached when it was loaded. */
export interface Segment {
  /** Base address. */
  base: bigint;
  /** Limit, in bytes (granularity already applied). */
  limit: number;
  /** Selector. */
  selector: number;
  /** Descriptor type (4 bits). */
  type: number;
  /** Present bit. */
  present: number;
  /** Descriptor privilege level. */
  dpl: number;
  /** Default operand size (D/B). */
  db: number;
  /** 1 for code/data, 0 for system descriptors. */
  s: number;
  /** 64-bit code segment. */
  l: number;
  /** Granularity. */
  g: number;
  /** Available-for-software bit. */
  avl: number;
  /** 1 when the register holds no usable segment (a null selector). */
  unusable: number;
}

/** A descriptor table register (GDTR, IDTR). */
export interface DescriptorTable {
  /** Base address. */
  base: bigint;
  /** Limit in bytes. */
  limit: number;
}

/** Segment, table and control registers. */
export interface SpecialRegisters {
  /** CS. */
  cs: Segment;
  /** DS. */
  ds: Segment;
  /** ES. */
  es: Segment;
  /** FS. */
  fs: Segment;
  /** GS. */
  gs: Segment;
  /** SS. */
  ss: Segment;
  /** Task register. */
  tr: Segment;
  /** LDT register. */
  ldt: Segment;
  /** GDTR. */
  gdt: DescriptorTable;
  /** IDTR. */
  idt: DescriptorTable;
  /** CR0. */
  cr0: bigint;
  /** CR2 (last page-fault address). */
  cr2: bigint;
  /** CR3 (page-table root). */
  cr3: bigint;
  /** CR4. */
  cr4: bigint;
  /** CR8 (task priority). */
  cr8: bigint;
  /** EFER. */
  efer: bigint;
  /** IA32_APIC_BASE. */
  apic_base: bigint;
  /** External interrupts pending injection, one bit per vector (KVM only; zero elsewhere). */
  interrupt_bitmap: bigint[];
}

/** One model-specific register. */
export interface MsrEntry {
  /** MSR index. */
  index: number;
  /** Value. */
  data: bigint;
}

/** Extended control registers (XCR0...). */
export interface XcrsState {
  /** Number of valid entries. */
  nr_xcrs: number;
  /** Flags (zero). */
  flags: number;
  /** The registers. */
  xcrs: Array<{ xcr: number; value: bigint }>;
}

/** Exceptions, interrupts and NMIs caught between delivery steps. */
export interface VcpuEvents {
  /** A pending or injected exception. */
  exception: {
    injected: number;
    nr: number;
    has_error_code: number;
    pending: number;
    error_code: number;
  };
  /** An injected external interrupt. */
  interrupt: { injected: number; nr: number; soft: number; shadow: number };
  /** NMI state. */
  nmi: { injected: number; pending: number; masked: number };
  /** SIPI vector of a waiting AP. */
  sipi_vector: number;
  /** Which fields are valid. */
  flags: number;
  /** SMM state. */
  smi: { smm: number; pending: number; smm_inside_nmi: number; latched_init: number };
  /** A triple fault waiting to be handled. */
  triple_fault: { pending: number };
  /** The exception payload (CR2 or DR6 value) is valid. */
  exception_has_payload: number;
  /** The exception payload. */
  exception_payload: bigint;
}

/** Debug registers. */
export interface DebugRegisters {
  /** DR0-DR3. */
  db: bigint[];
  /** DR6. */
  dr6: bigint;
  /** DR7. */
  dr7: bigint;
  /** Flags (zero). */
  flags: bigint;
}

/** One CPUID leaf as the guest sees it. */
export interface CpuidEntry {
  /** Leaf (EAX input). */
  function: number;
  /** Subleaf (ECX input). */
  index: number;
  /** KVM_CPUID_FLAG_* bits. */
  flags: number;
  /** EAX output. */
  eax: number;
  /** EBX output. */
  ebx: number;
  /** ECX output. */
  ecx: number;
  /** EDX output. */
  edx: number;
}

/** Run states (`mpState`), numbered as KVM numbers them. */
export const MP_STATE = { RUNNABLE: 0, UNINITIALIZED: 1, INIT_RECEIVED: 2, HALTED: 3 } as const;

/** Bytes in the local APIC register page (the architectural layout, registers at 16-byte steps). */
export const LAPIC_PAGE_BYTES = 1024;

/** LAPIC register offsets used by the emulated timer and the guests' boot code. */
export const LAPIC_REG = {
  /** Local APIC ID (bits 24-31). */
  ID: 0x20,
  /** Spurious interrupt vector register. */
  SVR: 0xf0,
  /** LVT timer. */
  LVT_TIMER: 0x320,
  /** LVT LINT0. */
  LVT_LINT0: 0x350,
  /** LVT LINT1. */
  LVT_LINT1: 0x360,
  /** Timer initial count. */
  TIMER_INITIAL: 0x380,
  /** Timer current count. */
  TIMER_CURRENT: 0x390,
  /** Timer divide configuration. */
  TIMER_DIVIDE: 0x3e0,
} as const;

/** Writes the LAPIC ID register of `page` to name vCPU `index` (xAPIC: ID in bits 24-31). */
export function withLapicId(page: Uint8Array, index: number): Uint8Array {
  new DataView(page.buffer, page.byteOffset, page.byteLength).setUint32(
    LAPIC_REG.ID,
    index << 24,
    true,
  );
  return page;
}

/** The APIC timer's input clock in the neutral form: 1 GHz, as KVM's. */
export const LAPIC_BUS_HZ = 1_000_000_000;

/** One vCPU's complete state. */
export interface CpuState {
  /** vCPU index. */
  index: number;
  /** General-purpose registers. */
  regs: Registers;
  /** Segment, table and control registers. */
  sregs: SpecialRegisters;
  /** Model-specific registers. */
  msrs: MsrEntry[];
  /** The local APIC register page (`LAPIC_PAGE_BYTES`), the timer's current count included. */
  lapic: Uint8Array;
  /** Run state (`MP_STATE`). */
  mpState: number;
  /** XSAVE area (x87, SSE, AVX) in the architectural XSAVE layout; absent: reset state. */
  xsave?: Uint8Array;
  /** Extended control registers; absent: reset state. */
  xcrs?: XcrsState;
  /** Pending events; absent: none. */
  events?: VcpuEvents;
  /** Debug registers; absent: reset state. */
  debugregs?: DebugRegisters;
  /** CPUID leaves the guest saw; absent: the restoring accelerator's own. */
  cpuid?: CpuidEntry[];
}

/** The interrupt controllers and timers outside the vCPUs (KVM's in-kernel chips). */
export interface PlatformState {
  /** PIC and IOAPIC in KVM's `kvm_irqchip` chip layouts; absent on the emulated CPU. */
  irqchip?: { picMaster: Uint8Array; picSlave: Uint8Array; ioapic: Uint8Array };
  /** The 8254 PIT in KVM's `kvm_pit_state2` fields; absent on the emulated CPU. */
  pit?: Record<string, unknown>;
  /** The guest clock: `clock` is nanoseconds of guest time. */
  clock?: { clock: bigint; flags?: number; realtime?: bigint; host_tsc?: bigint };
}
