/**
 * Each way a manifest file can be bad (docs/FORMAT.md), by name, and the older versions this dcres
 * still reads.
 */
import { assert, assertEquals, assertThrows } from "./helpers/assert.ts";
import { CheckpointFormatError, crc32, MANIFEST_VERSION } from "../src/ckpt/format.ts";
import { decodeManifest, encodeManifest, type Manifest, MAX_ADDRS } from "../src/ckpt/manifest.ts";
import { encodeCbor } from "../src/codec/cbor.ts";
import { FRAG_PAGES, MANIFEST_HEADER, manifestFor } from "./helpers/ckpt_fixture.ts";

// ---------------------------------------------------------------------------------------------
// Each way a manifest can be bad, by name.

const MFILE = "/store/g000003/MANIFEST";

function manifestBytes(): { bytes: Uint8Array<ArrayBuffer>; dv: DataView; bodyLen: number } {
  const bytes = encodeManifest(manifestFor(FRAG_PAGES, "g000003/main.frag", 7));
  return { bytes, dv: new DataView(bytes.buffer), bodyLen: bytes.length - MANIFEST_HEADER - 12 };
}

function rewriteManifestCrc(bytes: Uint8Array, dv: DataView, bodyLen: number) {
  dv.setUint32(
    MANIFEST_HEADER + bodyLen,
    crc32(bytes.subarray(0, MANIFEST_HEADER + bodyLen)),
    true,
  );
}

/** decodeManifest refuses `bytes` with a format error at `offset` whose message contains `what`. */
function refusesManifest(bytes: Uint8Array, offset: number, what: string): CheckpointFormatError {
  const e = assertThrows(
    () => decodeManifest(MFILE, bytes),
    CheckpointFormatError,
    what,
  ) as CheckpointFormatError;
  assert(e.message.startsWith(`${MFILE}: at byte ${offset}: `), e.message);
  return e;
}

Deno.test("a manifest with the wrong magic is refused at byte 0", () => {
  const { bytes } = manifestBytes();
  bytes[3] = 0x3f;
  refusesManifest(bytes, 0, "not a dcres manifest (wrong magic)");
});

Deno.test("a manifest shorter than its header and trailer is refused as truncated", () => {
  const { bytes } = manifestBytes();
  for (const len of [0, 7, 24, 35]) {
    refusesManifest(bytes.subarray(0, len), len, `file is ${len} bytes, too short for a manifest`);
  }
});

Deno.test("a manifest cut short or extended is refused: the body length does not match", () => {
  const { bytes } = manifestBytes();
  refusesManifest(bytes.subarray(0, bytes.length - 1), 16, "(truncated or extended)");
  const longer = new Uint8Array(bytes.length + 3);
  longer.set(bytes);
  refusesManifest(longer, 16, "(truncated or extended)");
});

Deno.test("a manifest with its end marker damaged is refused at the marker", () => {
  const { bytes, bodyLen } = manifestBytes();
  bytes[bytes.length - 2] ^= 1;
  refusesManifest(bytes, 28 + bodyLen, "end marker missing");
});

Deno.test("a manifest with a changed reserved byte, body byte or checksum is refused: checksum mismatch", () => {
  // 14 and 15 are reserved (not interpreted, but covered); -12 is the CRC's first byte.
  for (const at of [14, 15, MANIFEST_HEADER, MANIFEST_HEADER + 100, -12]) {
    const { bytes, bodyLen } = manifestBytes();
    bytes[at < 0 ? bytes.length + at : at] ^= 0x10;
    refusesManifest(bytes, MANIFEST_HEADER + bodyLen, "manifest checksum mismatch");
  }
});

Deno.test("a manifest with a newer minor version is refused by name with both versions", () => {
  const { bytes, dv, bodyLen } = manifestBytes();
  const minor = MANIFEST_VERSION.minor + 1;
  dv.setUint16(10, minor, true);
  rewriteManifestCrc(bytes, dv, bodyLen);
  const v = `${MANIFEST_VERSION.major}.${minor}.${MANIFEST_VERSION.patch}`;
  const e = refusesManifest(bytes, 8, `manifest format version ${v} is not readable by this dcres`);
  assert(
    e.message.includes(
      `(reads ${MANIFEST_VERSION.major}.0 to ${MANIFEST_VERSION.major}.${MANIFEST_VERSION.minor})`,
    ),
    e.message,
  );
});

Deno.test("a manifest with a newer major version is refused by name with both versions", () => {
  const { bytes, dv, bodyLen } = manifestBytes();
  const major = MANIFEST_VERSION.major + 1;
  dv.setUint16(8, major, true);
  rewriteManifestCrc(bytes, dv, bodyLen);
  const v = `${major}.${MANIFEST_VERSION.minor}.${MANIFEST_VERSION.patch}`;
  const e = refusesManifest(bytes, 8, `manifest format version ${v} is not readable`);
  assert(e.message.includes(`use a dcres that writes ${v}`), e.message);
});

Deno.test("a manifest with a newer patch version decodes", () => {
  const { bytes, dv, bodyLen } = manifestBytes();
  dv.setUint16(12, MANIFEST_VERSION.patch + 1, true);
  rewriteManifestCrc(bytes, dv, bodyLen);
  assertEquals(decodeManifest(MFILE, bytes).vm, "vm1");
});

Deno.test("a 1.0 manifest (before the split field) is read by this 1.3 dcres", () => {
  const { bytes, dv, bodyLen } = manifestBytes();
  dv.setUint16(10, 0, true);
  rewriteManifestCrc(bytes, dv, bodyLen);
  const m = decodeManifest(MFILE, bytes);
  assertEquals([m.vm, m.split], ["vm1", undefined]);
});

Deno.test("a 1.1 manifest (before machine.vm.accel) is read by this 1.3 dcres as taken on KVM", () => {
  const old = manifestFor(FRAG_PAGES, "g000003/main.frag", 7);
  const { accel: _, ...vm } = old.machine.vm;
  const bytes = manifestWithBody(encodeCbor({ ...old, machine: { ...old.machine, vm } }));
  const dv = new DataView(bytes.buffer);
  dv.setUint16(10, 1, true);
  rewriteManifestCrc(bytes, dv, bytes.length - MANIFEST_HEADER - 12);
  const m = decodeManifest(MFILE, bytes);
  assertEquals(m.machine.vm.accel, "kvm");
  assertEquals(m.machine.vm.vcpus[0].regs, old.machine.vm.vcpus[0].regs);
  assertEquals(m.machine.vm.clock, old.machine.vm.clock);
});

Deno.test("a checksummed manifest naming an unknown accelerator is refused naming the field", () => {
  const m = manifestFor(FRAG_PAGES, "g000003/main.frag", 7);
  const vm = { ...m.machine.vm, accel: "xen\nforged line" };
  const bytes = manifestWithBody(encodeCbor({ ...m, machine: { ...m.machine, vm } }));
  assertThrows(() => decodeManifest(MFILE, bytes), CheckpointFormatError, "machine.vm.accel");
});

Deno.test("a 1.2 manifest (before fragments[].copies) is read by this dcres as one copy each", () => {
  const got = decodeManifest(MFILE, olderManifest(2));
  assertEquals(got.fragments.map((f) => f.copies), [undefined]);
});

for (
  const [what, copies, expect] of [
    ["not a list", "node2", "is not a list"],
    ["a host that is not a host name", ["../node2"], "copies"],
    ["the writer's own host", ["main"], "names a host twice"],
    ["one host twice", ["node2", "node2"], "names a host twice"],
    ["more than 15 hosts", Array.from({ length: 16 }, (_, i) => `n${i}`), "at most 15"],
  ] as const
) {
  Deno.test(`a checksummed manifest whose fragment copies name ${what} is refused naming the field`, () => {
    const m = manifestFor(FRAG_PAGES, "g000003/main.frag", 7);
    const fragments = [{ ...m.fragments[0], host: "main", copies }];
    const bytes = manifestWithBody(encodeCbor({ ...m, fragments }));
    assertThrows(() => decodeManifest(MFILE, bytes), CheckpointFormatError, expect);
  });
}

Deno.test("a checksummed manifest whose split.mainAddr is not an address is refused naming the field", () => {
  const m = manifestFor(FRAG_PAGES, "g000003/main.frag", 7);
  const split = { mainMemBytes: 4096, hosts: { main: "main" }, mainAddr: 7 };
  const bytes = manifestWithBody(encodeCbor({ ...m, split }));
  assertThrows(() => decodeManifest(MFILE, bytes), CheckpointFormatError, "split.mainAddr");
});

Deno.test("a manifest listing a fragment's copies decodes with them", () => {
  const m = manifestFor(FRAG_PAGES, "g000003/main.frag", 7);
  const fragments = [{ ...m.fragments[0], host: "main", copies: ["node2", "node3"] }];
  const got = decodeManifest(MFILE, manifestWithBody(encodeCbor({ ...m, fragments })));
  assertEquals(got.fragments[0].copies, ["node2", "node3"]);
});

Deno.test("a 1.3 manifest (before addrs and host) is read by this 1.4 dcres without them", () => {
  const got = decodeManifest(MFILE, olderManifest(3));
  assertEquals([got.addrs, got.host], [undefined, undefined]);
});

for (
  const [what, extra, expect] of [
    ["addrs that is a list", { addrs: ["127.0.0.1:1"] }, "is not a map"],
    ["addrs naming a host that is not a host name", { addrs: { "../x": "h:1" } }, "addrs"],
    ["an address that is not text", { addrs: { node2: 7 } }, "addrs.node2"],
    ["an address without a port", { addrs: { node2: "node2" } }, "addrs.node2"],
    ["an address with a newline", { addrs: { node2: "a\nb:1" } }, "addrs.node2"],
    ["an address over 300 characters", { addrs: { node2: `${"a".repeat(300)}:1` } }, "addrs"],
    [
      `more than ${MAX_ADDRS} addresses`,
      {
        addrs: Object.fromEntries(
          Array.from({ length: MAX_ADDRS + 1 }, (_, i) => [`n${i}`, "h:1"]),
        ),
      },
      `more than ${MAX_ADDRS}`,
    ],
    ["a taker that is not a host name", { host: "node1\nforged" }, `field "host"`],
  ] as const
) {
  Deno.test(`a checksummed manifest with ${what} is refused naming the field`, () => {
    const m = manifestFor(FRAG_PAGES, "g000003/main.frag", 7);
    const bytes = manifestWithBody(encodeCbor({ ...m, ...extra }));
    assertThrows(() => decodeManifest(MFILE, bytes), CheckpointFormatError, expect);
  });
}

Deno.test("a manifest recording its holders' addresses and its taker decodes with them", () => {
  const m = manifestFor(FRAG_PAGES, "g000003/main.frag", 7);
  const addrs = { main: "127.0.0.1:7401", node2: "[::1]:7402", "node3.example": "10.0.0.3:7403" };
  const got = decodeManifest(MFILE, manifestWithBody(encodeCbor({ ...m, addrs, host: "node1" })));
  assertEquals([got.addrs, got.host], [addrs, "node1"]);
});

/** A plain manifest file that says it is version 1.`minor`, its checksum fixed up. */
function olderManifest(minor: number): Uint8Array {
  const bytes = manifestWithBody(encodeCbor(manifestFor(FRAG_PAGES, "g000003/main.frag", 7)));
  const dv = new DataView(bytes.buffer);
  dv.setUint16(10, minor, true);
  rewriteManifestCrc(bytes, dv, bytes.length - MANIFEST_HEADER - 12);
  return bytes;
}

/** A manifest file whose body is `body` (any CBOR), with a valid header and checksum. */
function manifestWithBody(body: Uint8Array): Uint8Array {
  const bytes = new Uint8Array(MANIFEST_HEADER + body.length + 12);
  const dv = new DataView(bytes.buffer);
  bytes.set(new TextEncoder().encode("DCRMANIF"), 0);
  dv.setUint16(8, MANIFEST_VERSION.major, true);
  dv.setUint16(10, MANIFEST_VERSION.minor, true);
  dv.setUint16(12, MANIFEST_VERSION.patch, true);
  dv.setBigUint64(16, BigInt(body.length), true);
  bytes.set(body, MANIFEST_HEADER);
  rewriteManifestCrc(bytes, dv, body.length);
  bytes.set(new TextEncoder().encode("DCRMEND\0"), MANIFEST_HEADER + body.length + 4);
  return bytes;
}

Deno.test("a checksummed manifest whose body is not CBOR is refused at the body", () => {
  const e = refusesManifest(manifestWithBody(Uint8Array.of(0x1f)), 24, "body does not decode");
  assert(e.message.includes("at byte 0"), e.message);
  refusesManifest(manifestWithBody(Uint8Array.of(0x61, 0xff)), 24, "body does not decode");
});

Deno.test("a checksummed manifest lacking a required field is refused naming the field", () => {
  const m: Record<string, unknown> = { ...manifestFor(FRAG_PAGES, "g000001/main.frag", 1) };
  delete m.pageMap;
  refusesManifest(manifestWithBody(encodeCbor(m)), 24, `field "pageMap" is missing`);
  refusesManifest(manifestWithBody(encodeCbor(7)), 24, "body is not a map");
});

Deno.test("a checksummed manifest whose page map names a fragment it does not list is refused", () => {
  const m = {
    ...manifestFor(FRAG_PAGES, "g000001/main.frag", 1),
    pageMap: Uint32Array.of(0, 8, 1),
  };
  refusesManifest(encodeManifest(m), 24, "pageMap run 0 names fragment 1 of 1");
  const ragged = { ...m, pageMap: Uint32Array.of(0, 8) };
  refusesManifest(
    encodeManifest(ragged),
    24,
    `field "pageMap" is missing or not runs of three u32`,
  );
});

Deno.test("a checksummed manifest whose fragments field is null is refused with a format error", () => {
  // decodeManifest checks fields with `=== undefined`, so null passes the presence check and then
  // `m.fragments.length` throws a TypeError.
  const m = { ...manifestFor(FRAG_PAGES, "g000001/main.frag", 1), fragments: null };
  refusesManifest(encodeManifest(m as unknown as Manifest), 24, "fragments");
});

for (
  const [what, change, expect] of [
    ["a fragment size that is negative", { bytes: -1 }, "fragments[0].bytes"],
    ["a fragment size that is not whole", { bytes: 1.5 }, "fragments[0].bytes"],
    ["a fragment size past any fragment of the VM", { bytes: 2 ** 40 }, "this VM's largest"],
  ] as const
) {
  Deno.test(`a checksummed manifest with ${what} is refused naming the field`, () => {
    const m = manifestFor(FRAG_PAGES, "g000003/main.frag", 7);
    const fragments = [{ ...m.fragments[0], ...change }];
    const bytes = manifestWithBody(encodeCbor({ ...m, fragments }));
    assertThrows(() => decodeManifest(MFILE, bytes), CheckpointFormatError, expect);
  });
}

const goodSplit = {
  mainMemBytes: 4096,
  hosts: { node1: "main", node2: "127.0.0.3:7400" },
  mainAddr: "127.0.0.2:7400",
};
for (
  const [what, split, expect] of [
    ["split that is a list", [goodSplit], `field "split" is not a map`],
    ["main's budget that is negative", { ...goodSplit, mainMemBytes: -4096 }, "mainMemBytes"],
    ["split hosts that are a list", { ...goodSplit, hosts: ["node1"] }, "split.hosts"],
    [
      "a split host that is not a host name",
      { ...goodSplit, hosts: { "../x": "127.0.0.3:7400" } },
      "split.hosts",
    ],
    [
      "a split host whose address is not one",
      { ...goodSplit, hosts: { node2: "node2" } },
      "split.hosts.node2",
    ],
    [
      `more than ${MAX_ADDRS} split hosts`,
      {
        ...goodSplit,
        hosts: Object.fromEntries(
          Array.from({ length: MAX_ADDRS + 1 }, (_, i) => [`n${i}`, "h:1"]),
        ),
      },
      `more than ${MAX_ADDRS}`,
    ],
    ["main's address without a port", { ...goodSplit, mainAddr: "127.0.0.2" }, "split.mainAddr"],
  ] as const
) {
  Deno.test(`a checksummed manifest with ${what} is refused naming the field`, () => {
    const m = manifestFor(FRAG_PAGES, "g000003/main.frag", 7);
    const bytes = manifestWithBody(encodeCbor({ ...m, split }));
    assertThrows(() => decodeManifest(MFILE, bytes), CheckpointFormatError, expect);
  });
}

Deno.test("a manifest of a split VM with its participants' addresses decodes with them", () => {
  const m = manifestFor(FRAG_PAGES, "g000003/main.frag", 7);
  const got = decodeManifest(MFILE, manifestWithBody(encodeCbor({ ...m, split: goodSplit })));
  assertEquals(got.split, goodSplit);
});
