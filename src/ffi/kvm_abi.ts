/**
 * The KVM ABI in one place: struct layouts (linux/kvm.h, asm/kvm.h) and ioctl numbers derived from
 * them. tests/ffi_kvm_abi_test.ts checks every size and number against the installed kernel headers.
 */
import { io, ior, iow, iowr } from "./ioctl.ts";
import { array, bytes, type Decoded, i64, pad, struct, u16, u32, u64, u8 } from "./struct.ts";

const KVMIO = 0xae;

/** `struct kvm_regs`. */
export const kvmRegs = struct("kvm_regs", {
  rax: u64,
  rbx: u64,
  rcx: u64,
  rdx: u64,
  rsi: u64,
  rdi: u64,
  rsp: u64,
  rbp: u64,
  r8: u64,
  r9: u64,
  r10: u64,
  r11: u64,
  r12: u64,
  r13: u64,
  r14: u64,
  r15: u64,
  rip: u64,
  rflags: u64,
});
/** General-purpose registers. */
export type KvmRegs = Decoded<typeof kvmRegs>;

/** `struct kvm_segment`. */
export const kvmSegment = struct("kvm_segment", {
  base: u64,
  limit: u32,
  selector: u16,
  type: u8,
  present: u8,
  dpl: u8,
  db: u8,
  s: u8,
  l: u8,
  g: u8,
  avl: u8,
  unusable: u8,
  padding: pad(1),
});
/** A segment register with its hidden part. */
export type KvmSegment = Decoded<typeof kvmSegment>;

/** `struct kvm_dtable`. */
export const kvmDtable = struct("kvm_dtable", { base: u64, limit: u16, padding: pad(6, 2) });
/** A descriptor-table register. */
export type KvmDtable = Decoded<typeof kvmDtable>;

/** `struct kvm_sregs`. */
export const kvmSregs = struct("kvm_sregs", {
  cs: kvmSegment,
  ds: kvmSegment,
  es: kvmSegment,
  fs: kvmSegment,
  gs: kvmSegment,
  ss: kvmSegment,
  tr: kvmSegment,
  ldt: kvmSegment,
  gdt: kvmDtable,
  idt: kvmDtable,
  cr0: u64,
  cr2: u64,
  cr3: u64,
  cr4: u64,
  cr8: u64,
  efer: u64,
  apic_base: u64,
  interrupt_bitmap: array(u64, 4),
});
/** Special registers. */
export type KvmSregs = Decoded<typeof kvmSregs>;

/** `struct kvm_fpu`. */
export const kvmFpu = struct("kvm_fpu", {
  fpr: bytes(128),
  fcw: u16,
  fsw: u16,
  ftwx: u8,
  pad1: pad(1),
  last_opcode: u16,
  last_ip: u64,
  last_dp: u64,
  xmm: bytes(256),
  mxcsr: u32,
  pad2: pad(4),
});
/** Legacy FPU/SSE state. */
export type KvmFpu = Decoded<typeof kvmFpu>;

/** `struct kvm_xsave` (the fixed 4 KiB; XSAVE2 may need more, see `xsaveSize`). */
export const KVM_XSAVE_SIZE = 4096;

/** `struct kvm_xcr`. */
export const kvmXcr = struct("kvm_xcr", { xcr: u32, reserved: pad(4), value: u64 });
/** `struct kvm_xcrs`. */
export const kvmXcrs = struct("kvm_xcrs", {
  nr_xcrs: u32,
  flags: u32,
  xcrs: array(kvmXcr, 16),
  padding: pad(128, 8),
});
/** Extended control registers. */
export type KvmXcrs = Decoded<typeof kvmXcrs>;

/** `struct kvm_msr_entry`. */
export const kvmMsrEntry = struct("kvm_msr_entry", { index: u32, reserved: pad(4), data: u64 });
/** One MSR. */
export type KvmMsrEntry = Decoded<typeof kvmMsrEntry>;
/** `struct kvm_msrs` header (followed by `nmsrs` entries). */
export const kvmMsrsHeader = struct("kvm_msrs", { nmsrs: u32, pad: pad(4) });
/** `struct kvm_msr_list` header (followed by `nmsrs` u32 indices). */
export const kvmMsrListHeader = struct("kvm_msr_list", { nmsrs: u32 });

/** `struct kvm_lapic_state`. */
export const kvmLapicState = struct("kvm_lapic_state", { regs: bytes(1024) });
/** Local APIC register page. */
export type KvmLapicState = Decoded<typeof kvmLapicState>;

/** `struct kvm_pic_state`. */
export const kvmPicState = struct("kvm_pic_state", {
  last_irr: u8,
  irr: u8,
  imr: u8,
  isr: u8,
  priority_add: u8,
  irq_base: u8,
  read_reg_select: u8,
  poll: u8,
  special_mask: u8,
  init_state: u8,
  auto_eoi: u8,
  rotate_on_auto_eoi: u8,
  special_fully_nested_mode: u8,
  init4: u8,
  elcr: u8,
  elcr_mask: u8,
});
/** One 8259 PIC. */
export type KvmPicState = Decoded<typeof kvmPicState>;

/** `struct kvm_ioapic_state`. */
export const kvmIoapicState = struct("kvm_ioapic_state", {
  base_address: u64,
  ioregsel: u32,
  id: u32,
  irr: u32,
  pad: pad(4),
  redirtbl: array(u64, 24),
});
/** The I/O APIC. */
export type KvmIoapicState = Decoded<typeof kvmIoapicState>;

/** `struct kvm_irqchip` (the chip union kept as bytes; decode with the chip's codec). */
export const kvmIrqchip = struct("kvm_irqchip", { chip_id: u32, pad: pad(4), chip: bytes(512, 8) });
/** Irqchip ids for `kvm_irqchip.chip_id`. */
export const IRQCHIP = { PIC_MASTER: 0, PIC_SLAVE: 1, IOAPIC: 2 } as const;

/** `struct kvm_pit_channel_state`. */
export const kvmPitChannelState = struct("kvm_pit_channel_state", {
  count: u32,
  latched_count: u16,
  count_latched: u8,
  status_latched: u8,
  status: u8,
  read_state: u8,
  write_state: u8,
  write_latch: u8,
  rw_mode: u8,
  mode: u8,
  bcd: u8,
  gate: u8,
  count_load_time: i64,
});
/** `struct kvm_pit_state2`. */
export const kvmPitState2 = struct("kvm_pit_state2", {
  channels: array(kvmPitChannelState, 3),
  flags: u32,
  reserved: pad(36, 4),
});
/** The in-kernel 8254 PIT. */
export type KvmPitState2 = Decoded<typeof kvmPitState2>;

/** `struct kvm_pit_config`. */
export const kvmPitConfig = struct("kvm_pit_config", { flags: u32, pad: pad(60, 4) });

/** `struct kvm_clock_data`. */
export const kvmClockData = struct("kvm_clock_data", {
  clock: u64,
  flags: u32,
  pad0: pad(4),
  realtime: u64,
  host_tsc: u64,
  pad: pad(16, 4),
});
/** kvmclock. */
export type KvmClockData = Decoded<typeof kvmClockData>;

/** `struct kvm_vcpu_events`. */
export const kvmVcpuEvents = struct("kvm_vcpu_events", {
  exception: struct("exception", {
    injected: u8,
    nr: u8,
    has_error_code: u8,
    pending: u8,
    error_code: u32,
  }),
  interrupt: struct("interrupt", { injected: u8, nr: u8, soft: u8, shadow: u8 }),
  nmi: struct("nmi", { injected: u8, pending: u8, masked: u8, pad: pad(1) }),
  sipi_vector: u32,
  flags: u32,
  smi: struct("smi", { smm: u8, pending: u8, smm_inside_nmi: u8, latched_init: u8 }),
  triple_fault: struct("triple_fault", { pending: u8 }),
  reserved: pad(26),
  exception_has_payload: u8,
  exception_payload: u64,
});
/** Pending exceptions, interrupts, NMIs. */
export type KvmVcpuEvents = Decoded<typeof kvmVcpuEvents>;

/** `struct kvm_mp_state`. */
export const kvmMpState = struct("kvm_mp_state", { mp_state: u32 });

/** `struct kvm_debugregs`. */
export const kvmDebugregs = struct("kvm_debugregs", {
  db: array(u64, 4),
  dr6: u64,
  dr7: u64,
  flags: u64,
  reserved: pad(72, 8),
});
/** Debug registers. */
export type KvmDebugregs = Decoded<typeof kvmDebugregs>;

/** `struct kvm_cpuid_entry2`. */
export const kvmCpuidEntry2 = struct("kvm_cpuid_entry2", {
  function: u32,
  index: u32,
  flags: u32,
  eax: u32,
  ebx: u32,
  ecx: u32,
  edx: u32,
  padding: pad(12, 4),
});
/** One CPUID leaf. */
export type KvmCpuidEntry2 = Decoded<typeof kvmCpuidEntry2>;
/** `struct kvm_cpuid2` header (followed by `nent` entries). */
export const kvmCpuid2Header = struct("kvm_cpuid2", { nent: u32, padding: pad(4) });

/** `struct kvm_userspace_memory_region`. */
export const kvmUserspaceMemoryRegion = struct("kvm_userspace_memory_region", {
  slot: u32,
  flags: u32,
  guest_phys_addr: u64,
  memory_size: u64,
  userspace_addr: u64,
});
/** A guest memory slot. */
export type KvmUserspaceMemoryRegion = Decoded<typeof kvmUserspaceMemoryRegion>;

/** `struct kvm_dirty_log`. */
export const kvmDirtyLog = struct("kvm_dirty_log", {
  slot: u32,
  padding1: pad(4),
  dirty_bitmap: u64,
});
/** `struct kvm_clear_dirty_log`. */
export const kvmClearDirtyLog = struct("kvm_clear_dirty_log", {
  slot: u32,
  num_pages: u32,
  first_page: u64,
  dirty_bitmap: u64,
});

/** `struct kvm_enable_cap`. */
export const kvmEnableCap = struct("kvm_enable_cap", {
  cap: u32,
  flags: u32,
  args: array(u64, 4),
  pad: pad(64),
});

/** `struct kvm_irq_level`. */
export const kvmIrqLevel = struct("kvm_irq_level", { irq: u32, level: u32 });

/** The fixed part of `struct kvm_run` that the vCPU loop reads (offsets only; it is mmapped). */
export const kvmRunHeader = struct("kvm_run_header", {
  request_interrupt_window: u8,
  immediate_exit: u8,
  padding1: pad(6),
  exit_reason: u32,
  ready_for_interrupt_injection: u8,
  if_flag: u8,
  flags: u16,
  cr8: u64,
  apic_base: u64,
});
/** `kvm_run.io` (at the exit union, offset 32). */
export const kvmRunIo = struct("kvm_run_io", {
  direction: u8,
  size: u8,
  port: u16,
  count: u32,
  data_offset: u64,
});
/** `kvm_run.mmio`. */
export const kvmRunMmio = struct("kvm_run_mmio", {
  phys_addr: u64,
  data: bytes(8),
  len: u32,
  is_write: u8,
});
/** Offset of the exit union in `struct kvm_run`. */
export const KVM_RUN_EXIT_UNION = 32;

/** `KVM_EXIT_*` reasons. */
export const EXIT = {
  UNKNOWN: 0,
  EXCEPTION: 1,
  IO: 2,
  HYPERCALL: 3,
  DEBUG: 4,
  HLT: 5,
  MMIO: 6,
  IRQ_WINDOW_OPEN: 7,
  SHUTDOWN: 8,
  FAIL_ENTRY: 9,
  INTR: 10,
  INTERNAL_ERROR: 17,
  SYSTEM_EVENT: 24,
} as const;

/** `KVM_EXIT_IO_*` directions. */
export const EXIT_IO = { IN: 0, OUT: 1 } as const;

/** `KVM_MP_STATE_*`. */
export const MP_STATE = { RUNNABLE: 0, UNINITIALIZED: 1, INIT_RECEIVED: 2, HALTED: 3 } as const;

/** Memory slot flags. */
export const MEM = { LOG_DIRTY_PAGES: 1, READONLY: 2 } as const;

/** Capabilities the VMM checks. */
export const CAP = {
  IRQCHIP: 0,
  HLT: 1,
  USER_MEMORY: 3,
  SET_TSS_ADDR: 4,
  EXT_CPUID: 7,
  NR_VCPUS: 9,
  NR_MEMSLOTS: 10,
  PIT2: 33,
  SYNC_MMU: 16,
  IRQ_ROUTING: 25,
  VCPU_EVENTS: 41,
  DEBUGREGS: 50,
  XSAVE: 55,
  XCRS: 56,
  ADJUST_CLOCK: 39,
  MAX_VCPUS: 66,
  IMMEDIATE_EXIT: 136,
  MANUAL_DIRTY_LOG_PROTECT2: 168,
  XSAVE2: 208,
} as const;

/** Clock flags. */
export const KVM_CLOCK_TSC_STABLE = 2;

/** `KVM_VCPUEVENT_VALID_*` flags. */
export const VCPUEVENT_VALID = { NMI_PENDING: 1, SIPI_VECTOR: 2, SHADOW: 4, SMM: 8 } as const;

/** Every ioctl the VMM uses, numbered from the struct sizes above. */
export const IOCTL = {
  GET_API_VERSION: io(KVMIO, 0x00),
  CREATE_VM: io(KVMIO, 0x01),
  GET_MSR_INDEX_LIST: iowr(KVMIO, 0x02, kvmMsrListHeader.size),
  CHECK_EXTENSION: io(KVMIO, 0x03),
  GET_VCPU_MMAP_SIZE: io(KVMIO, 0x04),
  GET_SUPPORTED_CPUID: iowr(KVMIO, 0x05, kvmCpuid2Header.size),
  CREATE_VCPU: io(KVMIO, 0x41),
  GET_DIRTY_LOG: iow(KVMIO, 0x42, kvmDirtyLog.size),
  SET_USER_MEMORY_REGION: iow(KVMIO, 0x46, kvmUserspaceMemoryRegion.size),
  SET_TSS_ADDR: io(KVMIO, 0x47),
  SET_IDENTITY_MAP_ADDR: iow(KVMIO, 0x48, 8),
  CREATE_IRQCHIP: io(KVMIO, 0x60),
  IRQ_LINE: iow(KVMIO, 0x61, kvmIrqLevel.size),
  GET_IRQCHIP: iowr(KVMIO, 0x62, kvmIrqchip.size),
  SET_IRQCHIP: ior(KVMIO, 0x63, kvmIrqchip.size),
  CREATE_PIT2: iow(KVMIO, 0x77, kvmPitConfig.size),
  SET_CLOCK: iow(KVMIO, 0x7b, kvmClockData.size),
  GET_CLOCK: ior(KVMIO, 0x7c, kvmClockData.size),
  GET_PIT2: ior(KVMIO, 0x9f, kvmPitState2.size),
  SET_PIT2: iow(KVMIO, 0xa0, kvmPitState2.size),
  CLEAR_DIRTY_LOG: iowr(KVMIO, 0xc0, kvmClearDirtyLog.size),
  ENABLE_CAP: iow(KVMIO, 0xa3, kvmEnableCap.size),
  RUN: io(KVMIO, 0x80),
  GET_REGS: ior(KVMIO, 0x81, kvmRegs.size),
  SET_REGS: iow(KVMIO, 0x82, kvmRegs.size),
  GET_SREGS: ior(KVMIO, 0x83, kvmSregs.size),
  SET_SREGS: iow(KVMIO, 0x84, kvmSregs.size),
  GET_MSRS: iowr(KVMIO, 0x88, kvmMsrsHeader.size),
  SET_MSRS: iow(KVMIO, 0x89, kvmMsrsHeader.size),
  GET_FPU: ior(KVMIO, 0x8c, kvmFpu.size),
  SET_FPU: iow(KVMIO, 0x8d, kvmFpu.size),
  GET_LAPIC: ior(KVMIO, 0x8e, kvmLapicState.size),
  SET_LAPIC: iow(KVMIO, 0x8f, kvmLapicState.size),
  SET_CPUID2: iow(KVMIO, 0x90, kvmCpuid2Header.size),
  GET_CPUID2: iowr(KVMIO, 0x91, kvmCpuid2Header.size),
  GET_MP_STATE: ior(KVMIO, 0x98, kvmMpState.size),
  SET_MP_STATE: iow(KVMIO, 0x99, kvmMpState.size),
  GET_VCPU_EVENTS: ior(KVMIO, 0x9f, kvmVcpuEvents.size),
  SET_VCPU_EVENTS: iow(KVMIO, 0xa0, kvmVcpuEvents.size),
  GET_DEBUGREGS: ior(KVMIO, 0xa1, kvmDebugregs.size),
  SET_DEBUGREGS: iow(KVMIO, 0xa2, kvmDebugregs.size),
  GET_XSAVE: ior(KVMIO, 0xa4, KVM_XSAVE_SIZE),
  SET_XSAVE: iow(KVMIO, 0xa5, KVM_XSAVE_SIZE),
  GET_XCRS: ior(KVMIO, 0xa6, kvmXcrs.size),
  SET_XCRS: iow(KVMIO, 0xa7, kvmXcrs.size),
  KVMCLOCK_CTRL: io(KVMIO, 0xad),
  GET_XSAVE2: ior(KVMIO, 0xcf, KVM_XSAVE_SIZE),
} as const;
