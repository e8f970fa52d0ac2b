/** A memstamp vCPU's state written out as the emulated CPU saves it (fixtures for the state tests). */
import { type CpuState, LAPIC_PAGE_BYTES, LAPIC_REG, MP_STATE } from "../../src/accel/cpu_state.ts";
import { LAYOUT, SEL, statusAddr, TSS_LIMIT } from "../../src/vmm/guests/memstamp/layout.ts";

/** MSR indices the state tests name. */
export const MSR = {
  SYSENTER_CS: 0x174,
  SYSENTER_ESP: 0x175,
  SYSENTER_EIP: 0x176,
  PAT: 0x277,
  STAR: 0xc0000081,
  LSTAR: 0xc0000082,
  CSTAR: 0xc0000083,
  SFMASK: 0xc0000084,
};

/** Memstamp's GDT limit for two vCPUs. */
export const GDT_LIMIT = SEL.tss(2) - 1;

/**
 * vCPU `i` of a two-vCPU memstamp guest as the emulated CPU saves it (EmuCpu.save) while the guest
 * runs its workload, written out by hand: ring 3 with memstamp's flat 64-bit user segments in CS
 * and SS (read back from the GDT), DS/ES/FS/GS null (the emulated CPU's load enters ring 3 through
 * `iretq`, which loads CS and SS only; 64-bit code needs no others), the vCPU's TSS in TR from
 * QEMU's flag word, no LDT, long mode with paging, the LAPIC timer counting down, its eight MSRs,
 * no optional parts. Its LAPIC ID register (0x20) is 0 on every vCPU, as the emulated CPU leaves
 * it: KVM takes that (a vCPU restored from it has xAPIC ID 0; memstamp never reads it).
 */
export function emuSavedMemstamp(i: number): CpuState {
  const flat = { base: 0n, limit: 0xffff_ffff, present: 1, s: 1, g: 1, avl: 0, unusable: 0 };
  const nul = {
    base: 0n,
    limit: 0,
    selector: 0,
    type: 0,
    present: 0,
    dpl: 0,
    db: 0,
    s: 0,
    l: 0,
    g: 0,
    avl: 0,
    unusable: 1,
  };
  const lapic = new Uint8Array(LAPIC_PAGE_BYTES);
  const dv = new DataView(lapic.buffer);
  dv.setUint32(LAPIC_REG.SVR, 0x1ff, true);
  dv.setUint32(LAPIC_REG.LVT_TIMER, 0x20040, true);
  dv.setUint32(LAPIC_REG.LVT_LINT0, 0x10000, true);
  dv.setUint32(LAPIC_REG.LVT_LINT1, 0x10000, true);
  dv.setUint32(LAPIC_REG.TIMER_INITIAL, 10_000_000, true);
  dv.setUint32(LAPIC_REG.TIMER_CURRENT, 3_141_592, true);
  dv.setUint32(LAPIC_REG.TIMER_DIVIDE, 0xb, true);
  return {
    index: i,
    regs: {
      rax: 0x1234n,
      rbx: 0x5_6000n,
      rcx: 0n,
      rdx: 0xffff_ffffn,
      rsi: BigInt(statusAddr(i)),
      rdi: BigInt(i),
      rsp: BigInt(LAYOUT.USTACKS + (i + 1) * LAYOUT.STACK_SIZE - 0x48),
      rbp: 0n,
      r8: 0x2d_1000n,
      r9: 7n,
      r10: 0n,
      r11: 0x3246n,
      r12: 0n,
      r13: 0n,
      r14: 0x9e37_79b9_7f4a_7c15n,
      r15: 0x100000n,
      rip: BigInt(LAYOUT.CODE + 0x1a4),
      rflags: 0x3246n,
    },
    sregs: {
      cs: { ...flat, selector: SEL.UCODE, type: 0xb, dpl: 3, db: 0, l: 1 },
      ss: { ...flat, selector: SEL.UDATA, type: 0x3, dpl: 3, db: 1, l: 0 },
      ds: nul,
      es: nul,
      fs: nul,
      gs: nul,
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
      ldt: nul,
      gdt: { base: BigInt(LAYOUT.GDT), limit: GDT_LIMIT },
      idt: { base: BigInt(LAYOUT.IDT), limit: 256 * 16 - 1 },
      cr0: 0x80050033n,
      cr2: 0n,
      cr3: BigInt(LAYOUT.PML4),
      cr4: 0x620n,
      cr8: 0n,
      efer: 0x500n,
      apic_base: 0xfee00800n | (i === 0 ? 0x100n : 0n),
      interrupt_bitmap: [0n, 0n, 0n, 0n],
    },
    msrs: [
      { index: MSR.SYSENTER_CS, data: 0n },
      { index: MSR.SYSENTER_ESP, data: 0n },
      { index: MSR.SYSENTER_EIP, data: 0n },
      { index: MSR.PAT, data: 0x0007_0406_0007_0406n },
      { index: MSR.STAR, data: 0n },
      { index: MSR.LSTAR, data: 0n },
      { index: MSR.CSTAR, data: 0n },
      { index: MSR.SFMASK, data: 0n },
    ],
    lapic,
    mpState: MP_STATE.RUNNABLE,
  };
}
