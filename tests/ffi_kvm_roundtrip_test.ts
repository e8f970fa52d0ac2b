import { noKvmReason, skipIf, TEST_ACCEL } from "./helpers/accel.ts";
import { assert, assertEquals } from "./helpers/assert.ts";
import { Kvm, VcpuFd } from "../src/ffi/kvm.ts";
import { CAP, IRQCHIP, kvmIoapicState, kvmPicState } from "../src/ffi/kvm_abi.ts";
import * as libc from "../src/ffi/libc.ts";

function setup() {
  const kvm = Kvm.open();
  const vm = kvm.createVm();
  vm.setTssAddr(0xfffbd000);
  vm.createIrqchip();
  vm.createPit2();
  const vcpu = new VcpuFd(vm.createVcpu(0));
  vcpu.setCpuid2(kvm.supportedCpuid());
  const close = () => {
    libc.close(vcpu.fd);
    vm.close();
    kvm.close();
  };
  return { kvm, vm, vcpu, close };
}

Deno.test({
  name: "vCPU register codecs survive get, set, get against the kernel",
  ...skipIf(noKvmReason, "vCPU register codecs survive get, set, get against the kernel"),
  fn: () => {
    const { kvm, vm, vcpu, close } = setup();
    try {
      const regs = vcpu.getRegs();
      regs.rax = 0x1122334455667788n;
      regs.r15 = 0xfedcba9876543210n;
      regs.rip = 0x1000n;
      vcpu.setRegs(regs);
      assertEquals(vcpu.getRegs(), regs);

      const sregs = vcpu.getSregs();
      sregs.cr3 = 0x5000n;
      sregs.gdt = { base: 0x800n, limit: 0x37 };
      sregs.cs.selector = 0x10;
      vcpu.setSregs(sregs);
      assertEquals(vcpu.getSregs(), sregs);

      const fpu = vcpu.getFpu();
      fpu.xmm[0] = 0x42;
      vcpu.setFpu(fpu);
      assertEquals(vcpu.getFpu(), fpu);

      const xsaveSize = vm.checkExtension(CAP.XSAVE2) || 4096;
      const xsave = vcpu.getXsave(xsaveSize);
      xsave[160] = 0x99; // XMM0 in the legacy area
      xsave[512] |= 0x3; // XSTATE_BV: x87 and SSE are not in their init state
      vcpu.setXsave(xsave);
      assertEquals(vcpu.getXsave(xsaveSize), xsave);

      const xcrs = vcpu.getXcrs();
      assert(xcrs.nr_xcrs >= 1, "XCR0 present");
      vcpu.setXcrs(xcrs);
      assertEquals(vcpu.getXcrs(), xcrs);

      const indices = kvm.msrIndexList();
      assert(indices.length > 10, `MSR index list has ${indices.length} entries`);
      const msrs = vcpu.getMsrs(indices);
      const settable = msrs.filter((m) => m.index === 0xc0000081 || m.index === 0x174);
      settable.forEach((m) => (m.data = m.index === 0x174 ? 0x10n : 0x0023001000000000n));
      vcpu.setMsrs(settable);
      assertEquals(vcpu.getMsrs(settable.map((m) => m.index)), settable);

      const lapic = vcpu.getLapic();
      lapic.regs[0x80] = 0x20; // TPR
      vcpu.setLapic(lapic);
      assertEquals(vcpu.getLapic().regs[0x80], 0x20);

      const events = vcpu.getVcpuEvents();
      events.nmi.masked = 1;
      vcpu.setVcpuEvents(events);
      assertEquals(vcpu.getVcpuEvents().nmi.masked, 1);

      vcpu.setMpState(0);
      assertEquals(vcpu.getMpState(), 0);

      const cpuid = kvm.supportedCpuid().map((e) =>
        e.function === 1 ? { ...e, ebx: (e.ebx & 0xffffff) | (5 << 24) } : e
      );
      vcpu.setCpuid2(cpuid);
      const got = vcpu.getCpuid2(); // KVM fills in runtime bits (OSXSAVE, APIC) on set
      assertEquals(got.find((e) => e.function === 1)!.ebx >>> 24, 5);
      vcpu.setCpuid2(got);
      assertEquals(vcpu.getCpuid2(), got);

      const dr = vcpu.getDebugregs();
      dr.db[0] = 0x4000n;
      vcpu.setDebugregs(dr);
      assertEquals(vcpu.getDebugregs().db, dr.db);
    } finally {
      close();
    }
  },
});

Deno.test({
  name: "VM device codecs (irqchip, PIT, clock) survive get, set, get against the kernel",
  ...skipIf(
    noKvmReason,
    "VM device codecs (irqchip, PIT, clock) survive get, set, get against the kernel",
  ),
  fn: () => {
    const { vm, close } = setup();
    try {
      const pic = kvmPicState.decode(vm.getIrqchip(IRQCHIP.PIC_MASTER));
      pic.imr = 0xfa;
      const picBytes = new Uint8Array(512);
      picBytes.set(kvmPicState.encode(pic));
      vm.setIrqchip(IRQCHIP.PIC_MASTER, picBytes);
      assertEquals(kvmPicState.decode(vm.getIrqchip(IRQCHIP.PIC_MASTER)), pic);

      const ioapic = kvmIoapicState.decode(vm.getIrqchip(IRQCHIP.IOAPIC));
      ioapic.redirtbl[3] = 0x10030n;
      const ioBytes = new Uint8Array(512);
      ioBytes.set(kvmIoapicState.encode(ioapic));
      vm.setIrqchip(IRQCHIP.IOAPIC, ioBytes);
      assertEquals(kvmIoapicState.decode(vm.getIrqchip(IRQCHIP.IOAPIC)).redirtbl, ioapic.redirtbl);

      const pit = vm.getPit2();
      pit.channels[2].gate = 1;
      pit.channels[0].mode = 2;
      vm.setPit2(pit);
      const again = vm.getPit2();
      assertEquals(again.channels[2].gate, 1);
      assertEquals(again.channels[0].mode, 2);

      const clock = vm.getClock();
      vm.setClock({ ...clock, clock: clock.clock + 1_000_000_000n, flags: 0 });
      const c2 = vm.getClock();
      assert(c2.clock >= clock.clock + 1_000_000_000n, "clock moved forward by the set amount");
    } finally {
      close();
    }
  },
});

Deno.test({
  name: "with manual dirty-log protect, GET_DIRTY_LOG keeps bits until CLEAR_DIRTY_LOG clears them",
  ...skipIf(
    noKvmReason,
    "with manual dirty-log protect, GET_DIRTY_LOG keeps bits until CLEAR_DIRTY_LOG clears them",
  ),
  fn: () => {
    const { kvm, vm, close } = setup();
    const size = 1 << 20;
    const fd = libc.memfdCreate("t");
    libc.ftruncate(fd, size);
    const p = libc.mmap(size, libc.MAP.PROT_READ | libc.MAP.PROT_WRITE, libc.MAP.SHARED, fd);
    try {
      const supported = BigInt(kvm.checkExtension(CAP.MANUAL_DIRTY_LOG_PROTECT2));
      assert(supported & 2n, "INITIALLY_SET is supported");
      vm.enableCap(CAP.MANUAL_DIRTY_LOG_PROTECT2, [3n]); // ENABLE | INITIALLY_SET
      vm.setUserMemoryRegion({
        slot: 0,
        flags: 1,
        guest_phys_addr: 0n,
        memory_size: BigInt(size),
        userspace_addr: libc.ptrValue(p),
      });
      const pages = size / 4096;
      const bitmap = new Uint8Array(pages / 8);
      vm.getDirtyLog(0, bitmap);
      assertEquals(bitmap.every((b) => b === 0xff), true, "every page starts dirty");
      vm.getDirtyLog(0, bitmap);
      assertEquals(bitmap.every((b) => b === 0xff), true, "GET does not clear in manual mode");
      vm.clearDirtyLog(0, 0, pages, bitmap);
      vm.getDirtyLog(0, bitmap);
      assertEquals(bitmap.every((b) => b === 0), true, "CLEAR emptied it");
    } finally {
      libc.munmap(p, size);
      libc.close(fd);
      close();
    }
  },
});

Deno.test(`the dirty log of a running guest on ${TEST_ACCEL} marks exactly the pages it wrote, and reading it resets it`, async () => {
  const { Vm } = await import("../src/vmm/vm.ts");
  const { bootMemstamp } = await import("../src/vmm/guests/memstamp/boot.ts");
  const { MemstampControl } = await import("../src/vmm/guests/memstamp/memstamp.ts");
  const memSize = 16 << 20;
  const vm = Vm.create({ name: "dirty", memSize, vcpus: 1 }, { devices: () => [] });
  bootMemstamp(vm, { memSize, vcpus: 1, pattern: "seq", workingSet: 64 * 4096, timerHz: 0 });
  const ctl = new MemstampControl(vm.memory);
  try {
    await vm.start();
    await ctl.waitStamped(30_000);
    vm.dirtyBitmap();
    await new Promise((r) => setTimeout(r, 50));
    await vm.pause();
    const bits = vm.dirtyBitmap();
    const dirty = [...bits].reduce((a, b) => a + popcount(b), 0);
    const start = Number(ctl.status(0).start);
    assert(
      dirty >= 64 && dirty < 64 + 300,
      `dirty pages ${dirty}: the 64-page working set plus table and stack`,
    );
    assert(bits[start >> 3] & (1 << (start & 7)), "the first working-set page is dirty");
    assertEquals(
      vm.dirtyBitmap().every((b) => b === 0),
      true,
      "the log was reset and the paused guest wrote nothing",
    );
  } finally {
    await vm.stop();
  }
});

function popcount(b: number): number {
  let n = 0;
  for (; b; b &= b - 1) n++;
  return n;
}
