/**
 * fast-check arbitraries shared by the manifest tests (ckpt_manifest_test.ts,
 * ckpt_manifest_cbor_test.ts): CBOR-encodable values and machine states.
 */
import fc from "fast-check";
import * as abi from "../../src/ffi/kvm_abi.ts";
import type { MachineState } from "../../src/vmm/machine.ts";
import type { CpuState } from "../../src/accel/cpu_state.ts";
import { PAGE_SIZE as PAGE } from "../../src/accel/accel.ts";

/** Integers at every CBOR head size boundary and at the edge of safe integers. */
const BOUNDARY_NUMBERS = [
  0,
  1,
  23,
  24,
  255,
  256,
  65535,
  65536,
  2 ** 32 - 1,
  2 ** 32,
  Number.MAX_SAFE_INTEGER,
  -1,
  -24,
  -25,
  -256,
  -257,
  -(2 ** 32),
  -(2 ** 32) - 1,
  Number.MIN_SAFE_INTEGER,
  2 ** 53,
  -(2 ** 53),
  2 ** 64,
  0.5,
  Number.MAX_VALUE,
  Number.MIN_VALUE,
  Infinity,
  -Infinity,
  NaN,
];

/** Bigints at 64-bit and byte boundaries, both signs. */
export const BOUNDARY_BIGINTS = [
  0n,
  1n,
  -1n,
  255n,
  256n,
  -256n,
  -257n,
  2n ** 53n,
  2n ** 63n - 1n,
  2n ** 63n,
  2n ** 64n - 1n,
  2n ** 64n,
  -(2n ** 63n),
  -(2n ** 63n) - 1n,
  -(2n ** 64n),
  -(2n ** 64n) - 1n,
  // The largest magnitudes MAX_BIGNUM_BYTES (64) allows, either sign.
  2n ** 512n - 1n,
  -(2n ** 512n),
];

/** Map keys: any well-formed string except `__proto__` (refused on decode, see the report). */
const key = fc.string({ unit: "grapheme", maxLength: 8 }).filter((k) => k !== "__proto__");

const leaf: fc.Arbitrary<unknown> = fc.oneof(
  fc.constant(null),
  fc.boolean(),
  fc.integer(),
  fc.maxSafeInteger(),
  fc.constantFrom(...BOUNDARY_NUMBERS),
  // -0 is written as the integer 0 (see "-0 survives a CBOR round trip" in
  // ckpt_manifest_cbor_test.ts).
  fc.double().filter((d) => !Object.is(d, -0)),
  fc.bigInt({ min: -(2n ** 200n), max: 2n ** 200n }),
  fc.constantFrom(...BOUNDARY_BIGINTS),
  fc.string({ unit: "grapheme", maxLength: 20 }),
  fc.uint8Array({ maxLength: 40 }),
  fc.uint16Array({ maxLength: 10 }),
  fc.uint32Array({ maxLength: 10 }),
  fc.bigUint64Array({ maxLength: 6 }),
  // Float64Array compares element-wise in assertEquals, where NaN !== NaN; its bytes are checked
  // separately in ckpt_manifest_cbor_test.ts.
  fc.float64Array({ maxLength: 6, noNaN: true }),
);

/** Any value the codec supports: leaves inside arrays and string-keyed maps, a few levels deep. */
export const cborValue: fc.Arbitrary<unknown> = fc.letrec((tie) => ({
  value: fc.oneof({ depthSize: "small", withCrossShrink: true }, leaf, tie("array"), tie("map")),
  array: fc.array(tie("value"), { maxLength: 5 }),
  map: fc.dictionary(key, tie("value"), { maxKeys: 5, noNullPrototype: true }),
})).value;

/** A decoded struct of codec `c`: its fields as a real KVM get-ioctl would give them. */
function struct<T>(c: { size: number; decode(b: Uint8Array): T }): fc.Arbitrary<T> {
  return fc.uint8Array({ minLength: c.size, maxLength: c.size }).map((b) => c.decode(b));
}

const u64 = fc.bigInt({ min: 0n, max: 2n ** 64n - 1n });

/** Records are plain objects, as decoded maps are (fast-check also makes null-prototype ones). */
const PLAIN = { noNullPrototype: true } as const;

const vcpuState: fc.Arbitrary<CpuState> = fc.record({
  index: fc.nat(31),
  regs: struct(abi.kvmRegs),
  sregs: struct(abi.kvmSregs),
  xsave: fc.uint8Array({ minLength: 0, maxLength: 4096 }),
  xcrs: struct(abi.kvmXcrs),
  msrs: fc.array(fc.record({ index: fc.nat({ max: 0xffffffff }), data: u64 }, PLAIN), {
    maxLength: 40,
  }),
  lapic: fc.uint8Array({ minLength: 1024, maxLength: 1024 }),
  events: struct(abi.kvmVcpuEvents),
  mpState: fc.nat(8),
  debugregs: struct(abi.kvmDebugregs),
  cpuid: fc.array(struct(abi.kvmCpuidEntry2), { maxLength: 8 }),
}, PLAIN);

const chip = fc.uint8Array({ minLength: 512, maxLength: 512 });

/** A MachineState: every KVM structure, device states, and a spec with optional parts. */
export const machineState: fc.Arbitrary<MachineState> = fc.record({
  name: fc.stringMatching(/^[A-Za-z0-9][A-Za-z0-9_.-]{0,15}$/),
  guest: fc.constantFrom("memstamp" as const, "linux" as const),
  memSize: fc.nat({ max: 2 ** 40 }).map((n) => n * PAGE),
  vcpus: fc.array(vcpuState, { minLength: 1, maxLength: 3 }),
  memstamp: fc.option(
    fc.record({
      pattern: fc.constantFrom("seq" as const, "random" as const, "hotcold" as const),
      delay: fc.nat(),
    }, { requiredKeys: [], ...PLAIN }),
    { nil: undefined },
  ),
  linux: fc.option(
    fc.record({
      kernel: fc.string(),
      initrd: fc.option(fc.string(), { nil: undefined }),
      cmdline: fc.string(),
    }, PLAIN),
    { nil: undefined },
  ),
  irqchip: fc.record({ picMaster: chip, picSlave: chip, ioapic: chip }, PLAIN),
  pit: struct(abi.kvmPitState2),
  clock: struct(abi.kvmClockData),
  devices: fc.dictionary(key, cborValue, { maxKeys: 4, noNullPrototype: true }),
  cmos: fc.uint8Array({ minLength: 128, maxLength: 128 }),
  accel: fc.constantFrom("kvm" as const, "emu" as const),
}, PLAIN).map((a) => {
  const spec = {
    name: a.name,
    guest: a.guest,
    memSize: a.memSize,
    vcpus: a.vcpus.length,
    ...(a.memstamp ? { memstamp: a.memstamp } : {}),
    ...(a.linux ? { linux: dropUndefined(a.linux) } : {}),
  };
  return {
    spec,
    vm: {
      config: { name: a.name, memSize: a.memSize, vcpus: a.vcpus.length },
      accel: a.accel,
      memory: { size: a.memSize },
      vcpus: a.vcpus,
      irqchip: a.irqchip,
      pit: a.pit,
      clock: a.clock,
      devices: { ...a.devices, cmos: { ram: a.cmos, index: 0x0f } },
    },
  };
});

/** `o` without its undefined-valued properties (the codec omits them, as JSON does). */
function dropUndefined<T extends object>(o: T): T {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as T;
}
