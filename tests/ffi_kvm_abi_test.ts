import { assertEquals } from "./helpers/assert.ts";
import * as abi from "../src/ffi/kvm_abi.ts";
import * as uffd from "../src/ffi/uffd.ts";
import type { StructCodec } from "../src/ffi/struct.ts";

const structs: Array<[string, StructCodec<unknown>]> = [
  ["struct kvm_regs", abi.kvmRegs],
  ["struct kvm_segment", abi.kvmSegment],
  ["struct kvm_dtable", abi.kvmDtable],
  ["struct kvm_sregs", abi.kvmSregs],
  ["struct kvm_fpu", abi.kvmFpu],
  ["struct kvm_xcrs", abi.kvmXcrs],
  ["struct kvm_msr_entry", abi.kvmMsrEntry],
  ["struct kvm_msrs", abi.kvmMsrsHeader],
  ["struct kvm_msr_list", abi.kvmMsrListHeader],
  ["struct kvm_lapic_state", abi.kvmLapicState],
  ["struct kvm_pic_state", abi.kvmPicState],
  ["struct kvm_ioapic_state", abi.kvmIoapicState],
  ["struct kvm_irqchip", abi.kvmIrqchip],
  ["struct kvm_pit_channel_state", abi.kvmPitChannelState],
  ["struct kvm_pit_state2", abi.kvmPitState2],
  ["struct kvm_pit_config", abi.kvmPitConfig],
  ["struct kvm_clock_data", abi.kvmClockData],
  ["struct kvm_vcpu_events", abi.kvmVcpuEvents],
  ["struct kvm_mp_state", abi.kvmMpState],
  ["struct kvm_debugregs", abi.kvmDebugregs],
  ["struct kvm_cpuid_entry2", abi.kvmCpuidEntry2],
  ["struct kvm_cpuid2", abi.kvmCpuid2Header],
  ["struct kvm_userspace_memory_region", abi.kvmUserspaceMemoryRegion],
  ["struct kvm_dirty_log", abi.kvmDirtyLog],
  ["struct kvm_clear_dirty_log", abi.kvmClearDirtyLog],
  ["struct kvm_enable_cap", abi.kvmEnableCap],
  ["struct kvm_irq_level", abi.kvmIrqLevel],
  ["struct uffdio_api", uffd.uffdioApi],
  ["struct uffdio_range", uffd.uffdioRange],
  ["struct uffdio_register", uffd.uffdioRegister],
  ["struct uffdio_copy", uffd.uffdioCopy],
  ["struct uffdio_zeropage", uffd.uffdioZeropage],
  ["struct uffdio_writeprotect", uffd.uffdioWriteprotect],
  ["struct uffd_msg", uffd.uffdMsg],
];

const ioctls: Array<[string, bigint]> = [
  ...Object.entries(abi.IOCTL).map(([k, v]) => [`KVM_${k}`, v] as [string, bigint]),
  ...Object.entries(uffd.UFFDIO_IOCTL).map(([k, v]) => [`UFFDIO_${k}`, v] as [string, bigint]),
];

const offsets: Array<[string, string, number]> = [
  ["struct kvm_run", "exit_reason", abi.kvmRunHeader.offsets.exit_reason],
  ["struct kvm_run", "immediate_exit", abi.kvmRunHeader.offsets.immediate_exit],
  ["struct kvm_run", "io", abi.KVM_RUN_EXIT_UNION],
  ["struct kvm_sregs", "apic_base", abi.kvmSregs.offsets.apic_base],
  ["struct kvm_vcpu_events", "exception_payload", abi.kvmVcpuEvents.offsets.exception_payload],
  ["struct kvm_fpu", "mxcsr", abi.kvmFpu.offsets.mxcsr],
  ["struct uffd_msg", "arg.pagefault.address", uffd.uffdMsg.offsets.address],
];

async function kernelValues(): Promise<Record<string, string> | string> {
  const gcc = await new Deno.Command("sh", { args: ["-c", "command -v gcc"] }).output();
  if (!gcc.success) return "gcc is not installed";
  const dir = await Deno.makeTempDir();
  const lines = [
    ...structs.map(([c]) => `printf("size\\t${c}\\t%zu\\n", sizeof(${c}));`),
    ...ioctls.map(([n]) => `printf("ioctl\\t${n}\\t%lu\\n", (unsigned long)${n});`),
    ...offsets.map(([c, f]) => `printf("off\\t${c}.${f}\\t%zu\\n", offsetof(${c}, ${f}));`),
  ];
  const src =
    `#include <stdio.h>\n#include <stddef.h>\n#include <linux/kvm.h>\n#include <linux/userfaultfd.h>\n` +
    `int main(void){\n${lines.join("\n")}\nreturn 0;}\n`;
  await Deno.writeTextFile(`${dir}/abi.c`, src);
  const cc = await new Deno.Command("gcc", { args: ["-o", `${dir}/abi`, `${dir}/abi.c`] }).output();
  if (!cc.success) throw new Error(new TextDecoder().decode(cc.stderr));
  const out = new TextDecoder().decode((await new Deno.Command(`${dir}/abi`).output()).stdout);
  await Deno.remove(dir, { recursive: true });
  const map: Record<string, string> = {};
  for (const line of out.trim().split("\n")) {
    const [kind, name, value] = line.split("\t");
    map[`${kind} ${name}`] = value;
  }
  return map;
}

Deno.test("every KVM and userfaultfd struct, offset and ioctl number matches the kernel headers", async (t) => {
  const k = await kernelValues();
  if (typeof k === "string") {
    console.log(`skipped: ${k}; cannot compare with the kernel headers`);
    return;
  }
  for (const [c, codec] of structs) {
    await t.step(c, () => assertEquals(codec.size, Number(k[`size ${c}`])));
  }
  for (const [n, v] of ioctls) assertEquals(`${n}=${v}`, `${n}=${k[`ioctl ${n}`]}`);
  for (const [c, f, v] of offsets) {
    assertEquals(`${c}.${f}=${v}`, `${c}.${f}=${k[`off ${c}.${f}`]}`);
  }
});
