/** Typed KVM file descriptors: the system fd, a VM fd and a vCPU fd, one method per ioctl. */
import * as abi from "./kvm_abi.ts";
import { IOCTL } from "./kvm_abi.ts";
import * as libc from "./libc.ts";
import { Errno, SyscallError } from "./errors.ts";
import type { StructCodec } from "./struct.ts";

/** /dev/kvm is missing or not usable; the message says what to do. */
export class KvmUnavailableError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "KvmUnavailableError";
  }
}

function getStruct<T>(fd: number, req: bigint, codec: StructCodec<T>, name: string): T {
  const buf = new Uint8Array(codec.size);
  libc.ioctlBuf(fd, req, buf, name);
  return codec.decode(buf);
}

function setStruct<T>(fd: number, req: bigint, codec: StructCodec<T>, value: T, name: string) {
  libc.ioctlBuf(fd, req, codec.encode(value), name);
}

function entriesBuffer<T>(
  header: Uint8Array<ArrayBuffer>,
  entry: StructCodec<T>,
  entries: T[],
): Uint8Array<ArrayBuffer> {
  const buf = new Uint8Array(header.length + entry.size * entries.length);
  buf.set(header);
  const dv = new DataView(buf.buffer);
  entries.forEach((e, i) => entry.write(dv, header.length + i * entry.size, e));
  return buf;
}

function readEntries<T>(buf: Uint8Array, headerSize: number, entry: StructCodec<T>, n: number) {
  const dv = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  return Array.from({ length: n }, (_, i) => entry.read(dv, headerSize + i * entry.size));
}

/** The /dev/kvm system fd. */
export class Kvm {
  private constructor(readonly fd: number) {}

  /** Opens /dev/kvm (or $DCRES_KVM_DEVICE) and checks the API version; fails with an actionable message. */
  static open(path = Deno.env.get("DCRES_KVM_DEVICE") ?? "/dev/kvm"): Kvm {
    let fd: number;
    try {
      fd = libc.open(path, libc.O.RDWR);
    } catch (e) {
      if (e instanceof SyscallError && e.errno === Errno.ENOENT) {
        throw new KvmUnavailableError(
          `${path} does not exist: load the kvm module (modprobe kvm_intel or kvm_amd) or run on a host with virtualization`,
        );
      }
      if (e instanceof SyscallError && (e.errno === Errno.EACCES || e.errno === Errno.EPERM)) {
        throw new KvmUnavailableError(
          `no permission to open ${path}: run as root or add this user to the group that owns it (usually 'kvm')`,
        );
      }
      throw e;
    }
    let v: number;
    try {
      v = libc.ioctlInt(fd, IOCTL.GET_API_VERSION, 0, "KVM_GET_API_VERSION");
    } catch {
      libc.close(fd);
      throw new KvmUnavailableError(
        `${path} is not a KVM device; point DCRES_KVM_DEVICE at /dev/kvm or unset it`,
      );
    }
    if (v !== 12) {
      libc.close(fd);
      throw new KvmUnavailableError(`${path}: KVM API version ${v}, need 12`);
    }
    return new Kvm(fd);
  }

  /** KVM_CHECK_EXTENSION on the system fd. */
  checkExtension(cap: number): number {
    return libc.ioctlInt(this.fd, IOCTL.CHECK_EXTENSION, cap, "KVM_CHECK_EXTENSION");
  }

  /** Size of the per-vCPU `kvm_run` mapping. */
  vcpuMmapSize(): number {
    return libc.ioctlInt(this.fd, IOCTL.GET_VCPU_MMAP_SIZE, 0, "KVM_GET_VCPU_MMAP_SIZE");
  }

  /** KVM_GET_MSR_INDEX_LIST: the MSRs whose state KVM saves and restores. */
  msrIndexList(): number[] {
    const max = 1024;
    const buf = new Uint8Array(abi.kvmMsrListHeader.size + 4 * max);
    new DataView(buf.buffer).setUint32(0, max, true);
    libc.ioctlBuf(this.fd, IOCTL.GET_MSR_INDEX_LIST, buf, "KVM_GET_MSR_INDEX_LIST");
    const n = new DataView(buf.buffer).getUint32(0, true);
    return Array.from(new Uint32Array(buf.buffer, 4, n));
  }

  /** KVM_GET_SUPPORTED_CPUID. */
  supportedCpuid(): abi.KvmCpuidEntry2[] {
    const max = 256;
    const header = abi.kvmCpuid2Header.encode({ nent: max });
    const buf = entriesBuffer(header, abi.kvmCpuidEntry2, []);
    const full = new Uint8Array(buf.length + max * abi.kvmCpuidEntry2.size);
    full.set(buf);
    libc.ioctlBuf(this.fd, IOCTL.GET_SUPPORTED_CPUID, full, "KVM_GET_SUPPORTED_CPUID");
    const n = abi.kvmCpuid2Header.decode(full).nent;
    return readEntries(full, abi.kvmCpuid2Header.size, abi.kvmCpuidEntry2, n);
  }

  /** KVM_CREATE_VM. */
  createVm(): VmFd {
    return new VmFd(libc.ioctlInt(this.fd, IOCTL.CREATE_VM, 0, "KVM_CREATE_VM"));
  }

  /** Closes the fd. */
  close(): void {
    libc.close(this.fd);
  }
}

/** A VM fd. */
export class VmFd {
  constructor(readonly fd: number) {}

  /** KVM_CHECK_EXTENSION on the VM fd (some answers are per-VM, e.g. XSAVE2's size). */
  checkExtension(cap: number): number {
    return libc.ioctlInt(this.fd, IOCTL.CHECK_EXTENSION, cap, "KVM_CHECK_EXTENSION");
  }

  /** KVM_SET_USER_MEMORY_REGION. */
  setUserMemoryRegion(r: abi.KvmUserspaceMemoryRegion): void {
    setStruct(
      this.fd,
      IOCTL.SET_USER_MEMORY_REGION,
      abi.kvmUserspaceMemoryRegion,
      r,
      "KVM_SET_USER_MEMORY_REGION",
    );
  }

  /** KVM_SET_TSS_ADDR (three pages Intel VMX needs below 4 GiB). */
  setTssAddr(addr: number): void {
    libc.ioctlInt(this.fd, IOCTL.SET_TSS_ADDR, addr, "KVM_SET_TSS_ADDR");
  }

  /** KVM_SET_IDENTITY_MAP_ADDR. */
  setIdentityMapAddr(addr: bigint): void {
    const b = new Uint8Array(8);
    new DataView(b.buffer).setBigUint64(0, addr, true);
    libc.ioctlBuf(this.fd, IOCTL.SET_IDENTITY_MAP_ADDR, b, "KVM_SET_IDENTITY_MAP_ADDR");
  }

  /** KVM_CREATE_IRQCHIP: in-kernel PIC, IOAPIC and LAPICs. */
  createIrqchip(): void {
    libc.ioctlInt(this.fd, IOCTL.CREATE_IRQCHIP, 0, "KVM_CREATE_IRQCHIP");
  }

  /** KVM_CREATE_PIT2. */
  createPit2(flags = 0): void {
    setStruct(this.fd, IOCTL.CREATE_PIT2, abi.kvmPitConfig, { flags }, "KVM_CREATE_PIT2");
  }

  /** KVM_IRQ_LINE. */
  irqLine(irq: number, level: number): void {
    setStruct(this.fd, IOCTL.IRQ_LINE, abi.kvmIrqLevel, { irq, level }, "KVM_IRQ_LINE");
  }

  /** KVM_GET_IRQCHIP for one chip; returns the raw 512-byte union. */
  getIrqchip(chipId: number): Uint8Array {
    const buf = abi.kvmIrqchip.encode({ chip_id: chipId, chip: new Uint8Array(512) });
    libc.ioctlBuf(this.fd, IOCTL.GET_IRQCHIP, buf, "KVM_GET_IRQCHIP");
    return abi.kvmIrqchip.decode(buf).chip;
  }

  /** KVM_SET_IRQCHIP for one chip from the raw 512-byte union. */
  setIrqchip(chipId: number, chip: Uint8Array): void {
    setStruct(
      this.fd,
      IOCTL.SET_IRQCHIP,
      abi.kvmIrqchip,
      { chip_id: chipId, chip },
      "KVM_SET_IRQCHIP",
    );
  }

  /** KVM_GET_PIT2. */
  getPit2(): abi.KvmPitState2 {
    return getStruct(this.fd, IOCTL.GET_PIT2, abi.kvmPitState2, "KVM_GET_PIT2");
  }

  /** KVM_SET_PIT2. */
  setPit2(s: abi.KvmPitState2): void {
    setStruct(this.fd, IOCTL.SET_PIT2, abi.kvmPitState2, s, "KVM_SET_PIT2");
  }

  /** KVM_GET_CLOCK. */
  getClock(): abi.KvmClockData {
    return getStruct(this.fd, IOCTL.GET_CLOCK, abi.kvmClockData, "KVM_GET_CLOCK");
  }

  /** KVM_SET_CLOCK. */
  setClock(c: abi.KvmClockData): void {
    setStruct(this.fd, IOCTL.SET_CLOCK, abi.kvmClockData, c, "KVM_SET_CLOCK");
  }

  /** KVM_GET_DIRTY_LOG into `bitmap` (one bit per page of the slot); clears the log unless manual-protect is on. */
  getDirtyLog(slot: number, bitmap: Uint8Array<ArrayBuffer>): void {
    const p = libc.ptrValue(Deno.UnsafePointer.of(bitmap));
    setStruct(
      this.fd,
      IOCTL.GET_DIRTY_LOG,
      abi.kvmDirtyLog,
      { slot, dirty_bitmap: p },
      "KVM_GET_DIRTY_LOG",
    );
  }

  /** KVM_CLEAR_DIRTY_LOG (with KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2) for pages set in `bitmap`. */
  clearDirtyLog(
    slot: number,
    firstPage: number,
    numPages: number,
    bitmap: Uint8Array<ArrayBuffer>,
  ): void {
    const p = libc.ptrValue(Deno.UnsafePointer.of(bitmap));
    setStruct(this.fd, IOCTL.CLEAR_DIRTY_LOG, abi.kvmClearDirtyLog, {
      slot,
      num_pages: numPages,
      first_page: BigInt(firstPage),
      dirty_bitmap: p,
    }, "KVM_CLEAR_DIRTY_LOG");
  }

  /** KVM_ENABLE_CAP on the VM. */
  enableCap(cap: number, args: bigint[] = []): void {
    const a = [0n, 0n, 0n, 0n].map((z, i) => args[i] ?? z);
    setStruct(
      this.fd,
      IOCTL.ENABLE_CAP,
      abi.kvmEnableCap,
      { cap, flags: 0, args: a },
      "KVM_ENABLE_CAP",
    );
  }

  /** KVM_CREATE_VCPU. */
  createVcpu(id: number): number {
    return libc.ioctlInt(this.fd, IOCTL.CREATE_VCPU, id, "KVM_CREATE_VCPU");
  }

  /** Closes the fd. */
  close(): void {
    libc.close(this.fd);
  }
}

/** A vCPU fd; usable from any thread (the state ioctls need the vCPU out of KVM_RUN). */
export class VcpuFd {
  constructor(readonly fd: number) {}

  /** KVM_GET_REGS. */
  getRegs(): abi.KvmRegs {
    return getStruct(this.fd, IOCTL.GET_REGS, abi.kvmRegs, "KVM_GET_REGS");
  }
  /** KVM_SET_REGS. */
  setRegs(r: abi.KvmRegs): void {
    setStruct(this.fd, IOCTL.SET_REGS, abi.kvmRegs, r, "KVM_SET_REGS");
  }
  /** KVM_GET_SREGS. */
  getSregs(): abi.KvmSregs {
    return getStruct(this.fd, IOCTL.GET_SREGS, abi.kvmSregs, "KVM_GET_SREGS");
  }
  /** KVM_SET_SREGS. */
  setSregs(s: abi.KvmSregs): void {
    setStruct(this.fd, IOCTL.SET_SREGS, abi.kvmSregs, s, "KVM_SET_SREGS");
  }
  /** KVM_GET_FPU. */
  getFpu(): abi.KvmFpu {
    return getStruct(this.fd, IOCTL.GET_FPU, abi.kvmFpu, "KVM_GET_FPU");
  }
  /** KVM_SET_FPU. */
  setFpu(f: abi.KvmFpu): void {
    setStruct(this.fd, IOCTL.SET_FPU, abi.kvmFpu, f, "KVM_SET_FPU");
  }
  /** KVM_GET_XSAVE2 when `size` > 4096 (size from KVM_CAP_XSAVE2), else KVM_GET_XSAVE. */
  getXsave(size: number): Uint8Array {
    const buf = new Uint8Array(Math.max(size, abi.KVM_XSAVE_SIZE));
    const useV2 = size > abi.KVM_XSAVE_SIZE;
    libc.ioctlBuf(
      this.fd,
      useV2 ? IOCTL.GET_XSAVE2 : IOCTL.GET_XSAVE,
      buf,
      useV2 ? "KVM_GET_XSAVE2" : "KVM_GET_XSAVE",
    );
    return buf;
  }
  /** KVM_SET_XSAVE (takes the XSAVE2-sized buffer too). */
  setXsave(region: Uint8Array): void {
    const buf = new Uint8Array(Math.max(region.length, abi.KVM_XSAVE_SIZE));
    buf.set(region);
    libc.ioctlBuf(this.fd, IOCTL.SET_XSAVE, buf, "KVM_SET_XSAVE");
  }
  /** KVM_GET_XCRS. */
  getXcrs(): abi.KvmXcrs {
    return getStruct(this.fd, IOCTL.GET_XCRS, abi.kvmXcrs, "KVM_GET_XCRS");
  }
  /** KVM_SET_XCRS. */
  setXcrs(x: abi.KvmXcrs): void {
    setStruct(this.fd, IOCTL.SET_XCRS, abi.kvmXcrs, x, "KVM_SET_XCRS");
  }
  /** KVM_GET_MSRS for the given indices; returns the entries KVM filled. */
  getMsrs(indices: number[]): abi.KvmMsrEntry[] {
    const header = abi.kvmMsrsHeader.encode({ nmsrs: indices.length });
    const buf = entriesBuffer(
      header,
      abi.kvmMsrEntry,
      indices.map((index) => ({ index, data: 0n })),
    );
    const n = libc.ioctlBuf(this.fd, IOCTL.GET_MSRS, buf, "KVM_GET_MSRS");
    return readEntries(buf, abi.kvmMsrsHeader.size, abi.kvmMsrEntry, n);
  }
  /** KVM_SET_MSRS; throws unless every entry was accepted. */
  setMsrs(entries: abi.KvmMsrEntry[]): void {
    const header = abi.kvmMsrsHeader.encode({ nmsrs: entries.length });
    const n = libc.ioctlBuf(
      this.fd,
      IOCTL.SET_MSRS,
      entriesBuffer(header, abi.kvmMsrEntry, entries),
      "KVM_SET_MSRS",
    );
    if (n !== entries.length) {
      throw new SyscallError(
        `ioctl(KVM_SET_MSRS) rejected MSR 0x${entries[n].index.toString(16)}`,
        Errno.EINVAL,
      );
    }
  }
  /** KVM_GET_LAPIC. */
  getLapic(): abi.KvmLapicState {
    return getStruct(this.fd, IOCTL.GET_LAPIC, abi.kvmLapicState, "KVM_GET_LAPIC");
  }
  /** KVM_SET_LAPIC. */
  setLapic(l: abi.KvmLapicState): void {
    setStruct(this.fd, IOCTL.SET_LAPIC, abi.kvmLapicState, l, "KVM_SET_LAPIC");
  }
  /** KVM_GET_VCPU_EVENTS. */
  getVcpuEvents(): abi.KvmVcpuEvents {
    return getStruct(this.fd, IOCTL.GET_VCPU_EVENTS, abi.kvmVcpuEvents, "KVM_GET_VCPU_EVENTS");
  }
  /** KVM_SET_VCPU_EVENTS. */
  setVcpuEvents(e: abi.KvmVcpuEvents): void {
    setStruct(this.fd, IOCTL.SET_VCPU_EVENTS, abi.kvmVcpuEvents, e, "KVM_SET_VCPU_EVENTS");
  }
  /** KVM_GET_MP_STATE. */
  getMpState(): number {
    return getStruct(this.fd, IOCTL.GET_MP_STATE, abi.kvmMpState, "KVM_GET_MP_STATE").mp_state;
  }
  /** KVM_SET_MP_STATE. */
  setMpState(mp_state: number): void {
    setStruct(this.fd, IOCTL.SET_MP_STATE, abi.kvmMpState, { mp_state }, "KVM_SET_MP_STATE");
  }
  /** KVM_GET_DEBUGREGS. */
  getDebugregs(): abi.KvmDebugregs {
    return getStruct(this.fd, IOCTL.GET_DEBUGREGS, abi.kvmDebugregs, "KVM_GET_DEBUGREGS");
  }
  /** KVM_SET_DEBUGREGS. */
  setDebugregs(d: abi.KvmDebugregs): void {
    setStruct(this.fd, IOCTL.SET_DEBUGREGS, abi.kvmDebugregs, d, "KVM_SET_DEBUGREGS");
  }
  /** KVM_SET_CPUID2. */
  setCpuid2(entries: abi.KvmCpuidEntry2[]): void {
    const header = abi.kvmCpuid2Header.encode({ nent: entries.length });
    libc.ioctlBuf(
      this.fd,
      IOCTL.SET_CPUID2,
      entriesBuffer(header, abi.kvmCpuidEntry2, entries),
      "KVM_SET_CPUID2",
    );
  }
  /** KVM_GET_CPUID2: the CPUID table installed on this vCPU. */
  getCpuid2(): abi.KvmCpuidEntry2[] {
    const max = 256;
    const buf = new Uint8Array(abi.kvmCpuid2Header.size + max * abi.kvmCpuidEntry2.size);
    buf.set(abi.kvmCpuid2Header.encode({ nent: max }));
    libc.ioctlBuf(this.fd, IOCTL.GET_CPUID2, buf, "KVM_GET_CPUID2");
    const n = abi.kvmCpuid2Header.decode(buf).nent;
    return readEntries(buf, abi.kvmCpuid2Header.size, abi.kvmCpuidEntry2, n);
  }
  /** KVM_KVMCLOCK_CTRL: tells the guest it was paused (EINVAL when kvmclock is not in use). */
  kvmclockCtrl(): void {
    libc.ioctlInt(this.fd, IOCTL.KVMCLOCK_CTRL, 0, "KVM_KVMCLOCK_CTRL");
  }
}
