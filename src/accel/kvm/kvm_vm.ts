/**
 * One KVM VM: the VM fd with its TSS and identity-map pages, in-kernel irqchip and PIT, guest RAM
 * as memory slot 0 with dirty logging, interrupt lines, and the chips' and clock's state.
 */
import * as abi from "../../ffi/kvm_abi.ts";
import type { Kvm, VmFd } from "../../ffi/kvm.ts";
import type { AccelVcpu, AccelVm, RamRegion } from "../accel.ts";
import type { PlatformState } from "../cpu_state.ts";
import { KvmVcpu } from "./kvm_vcpu.ts";
import { chipOf, kvmClockOf, kvmPitOf, platformOf } from "./kvm_state.ts";
import { PAGE_SIZE } from "../accel.ts";

// Three pages Intel VMX needs below 4 GiB, and the identity-mapped page table page below them.
const TSS_ADDR = 0xfffbd000;
const IDENTITY_MAP_ADDR = 0xfffbc000n;
const SLOT_RAM = 0;

/** What creating a KVM VM needs from the accelerator. */
export interface KvmVmArgs {
  /** The system fd. */
  kvm: Kvm;
  /** Guest RAM. */
  ram: RamRegion;
  /** KVM_GET_SUPPORTED_CPUID. */
  cpuid: abi.KvmCpuidEntry2[];
  /** KVM_GET_MSR_INDEX_LIST. */
  msrIndices: number[];
}

/** A KVM VM over one RAM region. */
export class KvmVm implements AccelVm {
  /** Always `kvm`. */
  readonly kind = "kvm" as const;
  readonly #kvm: Kvm;
  readonly #fd: VmFd;
  readonly #cpuid: abi.KvmCpuidEntry2[];
  readonly #msrIndices: number[];
  readonly #xsaveSize: number;
  readonly #dirty: Uint8Array<ArrayBuffer>;

  constructor(args: KvmVmArgs) {
    this.#kvm = args.kvm;
    this.#cpuid = args.cpuid;
    this.#msrIndices = args.msrIndices;
    this.#dirty = new Uint8Array(Math.ceil(args.ram.size / PAGE_SIZE / 64) * 8);
    const fd = args.kvm.createVm();
    try {
      fd.setTssAddr(TSS_ADDR);
      fd.setIdentityMapAddr(IDENTITY_MAP_ADDR);
      fd.createIrqchip();
      fd.createPit2();
      fd.setUserMemoryRegion({
        slot: SLOT_RAM,
        flags: abi.MEM.LOG_DIRTY_PAGES,
        guest_phys_addr: 0n,
        memory_size: BigInt(args.ram.size),
        userspace_addr: args.ram.hostAddr,
      });
      this.#xsaveSize = Math.max(fd.checkExtension(abi.CAP.XSAVE2), abi.KVM_XSAVE_SIZE);
    } catch (e) {
      fd.close();
      throw e;
    }
    this.#fd = fd;
  }

  /** A vCPU with the supported CPUID, its APIC id filled in. */
  createVcpu(index: number): AccelVcpu {
    return new KvmVcpu({
      kvm: this.#kvm,
      vm: this.#fd,
      index,
      cpuid: cpuidFor(this.#cpuid, index),
      xsaveSize: this.#xsaveSize,
      msrIndices: this.#msrIndices,
    });
  }

  /** KVM_IRQ_LINE on the in-kernel PIC/IOAPIC. */
  setIrq(line: number, level: boolean): void {
    this.#fd.irqLine(line, level ? 1 : 0);
  }

  /** KVM_GET_DIRTY_LOG of the RAM slot (which resets it), ORed into `bitmap`. */
  harvestDirty(bitmap: Uint8Array): void {
    this.#fd.getDirtyLog(SLOT_RAM, this.#dirty);
    const n = Math.min(bitmap.length, this.#dirty.length);
    for (let i = 0; i < n; i++) bitmap[i] |= this.#dirty[i];
  }

  /** PIC, IOAPIC, PIT and kvmclock. */
  savePlatform(): PlatformState {
    const chip = (id: number) => this.#fd.getIrqchip(id);
    return platformOf({
      irqchip: {
        picMaster: chip(abi.IRQCHIP.PIC_MASTER),
        picSlave: chip(abi.IRQCHIP.PIC_SLAVE),
        ioapic: chip(abi.IRQCHIP.IOAPIC),
      },
      pit: this.#fd.getPit2(),
      clock: this.#fd.getClock(),
    });
  }

  /** Installs the parts of `s` that are present; the others keep their reset state. */
  loadPlatform(s: PlatformState): void {
    if (s.irqchip) {
      this.#fd.setIrqchip(abi.IRQCHIP.PIC_MASTER, chipOf(s.irqchip.picMaster));
      this.#fd.setIrqchip(abi.IRQCHIP.PIC_SLAVE, chipOf(s.irqchip.picSlave));
      this.#fd.setIrqchip(abi.IRQCHIP.IOAPIC, chipOf(s.irqchip.ioapic));
    }
    if (s.pit) this.#fd.setPit2(kvmPitOf(s.pit));
    if (s.clock) this.#fd.setClock(kvmClockOf(s.clock));
  }

  /** Closes the VM fd (every vCPU closed first). */
  close(): void {
    this.#fd.close();
  }
}

/** Supported CPUID with vCPU `index`'s APIC id filled in. */
function cpuidFor(supported: abi.KvmCpuidEntry2[], index: number): abi.KvmCpuidEntry2[] {
  return supported.map((e) => {
    if (e.function === 1) return { ...e, ebx: (e.ebx & 0x00ffffff) | (index << 24) };
    if (e.function === 0xb || e.function === 0x1f) return { ...e, edx: index };
    return e;
  });
}
