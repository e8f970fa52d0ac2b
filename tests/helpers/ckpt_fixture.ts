/**
 * Shared fixtures for the damaged-checkpoint tests (ckpt_corruption_*_test.ts): a small real
 * fragment (written by FragmentWriter from a page-aligned buffer) and a small real manifest, read
 * back through the readers' checks, and a temp dir per test.
 */
import { PAGE_SIZE as PAGE } from "../../src/accel/accel.ts";
import { FragmentWriter, type PageSource } from "../../src/ckpt/fragment_writer.ts";
import { FragmentReader } from "../../src/ckpt/fragment_reader.ts";
import { fragmentFooter } from "../../src/ckpt/fragment_layout.ts";
import type { Manifest } from "../../src/ckpt/manifest.ts";
import * as abi from "../../src/ffi/kvm_abi.ts";
import type { MachineState } from "../../src/vmm/machine.ts";

/** Size of a fragment's footer. */
export const FOOTER = fragmentFooter.size; // 64
/** Size of a manifest's header, before the CBOR body. */
export const MANIFEST_HEADER = 24;

/**
 * A page-aligned buffer of `pages` pages, usable as a PageSource: the writer pwritev()s straight
 * from it, with O_DIRECT where the file system allows, which needs aligned memory.
 */
function alignedPages(pages: number): PageSource {
  const raw = new Uint8Array((pages + 1) * PAGE);
  const addr = BigInt(Deno.UnsafePointer.value(Deno.UnsafePointer.of(raw)));
  const skip = Number((BigInt(PAGE) - addr % BigInt(PAGE)) % BigInt(PAGE));
  return { bytes: raw.subarray(skip, skip + pages * PAGE), base: addr + BigInt(skip) };
}

/** Host address of `bytes[0]`. */
export function addressOf(bytes: Uint8Array<ArrayBuffer>): bigint {
  return BigInt(Deno.UnsafePointer.value(Deno.UnsafePointer.of(bytes)));
}

/** Pages in the fixture fragment's guest memory. */
export const FRAG_PAGES = 8;
const ZERO_GFNS = [2, 5];
/** The fixture checkpoint's id, as written in its fragment headers. */
export const CHECKPOINT_ID = Uint8Array.from({ length: 16 }, (_, i) => 0xa0 + i);

/** Guest memory of FRAG_PAGES pages: gfns 2 and 5 are zero, the rest hold distinct patterns. */
export function guestMemory(): PageSource {
  const src = alignedPages(FRAG_PAGES);
  for (let g = 0; g < FRAG_PAGES; g++) {
    if (ZERO_GFNS.includes(g)) continue;
    const v = new DataView(src.bytes.buffer, src.bytes.byteOffset + g * PAGE, PAGE);
    // Compressible (repeats every 64 bytes) but different in every page and every 64-byte line.
    for (let o = 0; o < PAGE; o += 4) v.setUint32(o, (g * 0x9e3779b1 + (o % 64) * 131) >>> 0, true);
    v.setUint32(PAGE - 4, g, true);
  }
  return src;
}

/**
 * Writes a fragment of guestMemory() (changed by `edit`, if given): two chunks (a flush between two
 * appends, pages out of gfn order) and a page saved twice, so the first chunk holds a superseded
 * copy. Returns the footer CRC.
 */
export async function writeFragment(
  path: string,
  compress: boolean,
  generation = 3,
  edit?: (mem: Uint8Array) => void,
): Promise<number> {
  const src = guestMemory();
  edit?.(src.bytes);
  const w = FragmentWriter.create(path, { checkpointId: CHECKPOINT_ID, generation, compress });
  await w.append([5, 1, 7, 0], src);
  await w.flush();
  await w.append([3, 2, 6, 4, 1], src);
  return (await w.finish()).footerCrc;
}

/** What a fragment holds, as read back through the reader's checks. */
export interface FragmentContent {
  generation: number;
  checkpointId: number[];
  footerCrc: number;
  gfns: number[];
  flags: number[];
  /** Page i of the page table at i * PAGE. */
  bytes: Uint8Array;
}

/** Opens `path`, reads every page (page CRCs) and verifies every zstd chunk (chunk CRCs). */
export function readFragment(path: string): FragmentContent {
  const r = FragmentReader.open(path);
  try {
    const idx = Array.from({ length: r.pages }, (_, i) => i);
    const dst = new Uint8Array(r.pages * PAGE);
    r.readInto(idx, dst, addressOf(dst), idx.map((i) => i * PAGE));
    r.verifyChunks();
    return {
      generation: r.generation,
      checkpointId: [...r.checkpointId],
      footerCrc: r.footerCrc,
      gfns: [...r.gfns],
      flags: [...r.pageFlags],
      bytes: dst,
    };
  } finally {
    r.close();
  }
}

/** A MachineState with the shape and value kinds a real one has (bigints, blobs, nested maps). */
export function machineState(memSize: number): MachineState {
  const blob = (n: number, seed: number) =>
    Uint8Array.from({ length: n }, (_, i) => (i * 31 + seed * 17) & 0xff);
  const spec = { name: "vm1", guest: "memstamp" as const, memSize, vcpus: 1 };
  return {
    spec,
    vm: {
      config: { name: "vm1", memSize, vcpus: 1 },
      accel: "kvm",
      memory: { size: memSize },
      vcpus: [{
        index: 0,
        regs: abi.kvmRegs.decode(blob(abi.kvmRegs.size, 1)),
        sregs: abi.kvmSregs.decode(blob(abi.kvmSregs.size, 2)),
        xsave: blob(512, 3),
        xcrs: abi.kvmXcrs.decode(blob(abi.kvmXcrs.size, 4)),
        msrs: [{ index: 0xc0000080, data: 0xd01n }, { index: 0x10, data: 0xffff_ffff_ffff_fff0n }],
        lapic: blob(1024, 5),
        events: abi.kvmVcpuEvents.decode(blob(abi.kvmVcpuEvents.size, 6)),
        mpState: 0,
        debugregs: abi.kvmDebugregs.decode(blob(abi.kvmDebugregs.size, 7)),
        cpuid: [abi.kvmCpuidEntry2.decode(blob(abi.kvmCpuidEntry2.size, 8))],
      }],
      irqchip: { picMaster: blob(512, 9), picSlave: blob(512, 10), ioapic: blob(512, 11) },
      pit: abi.kvmPitState2.decode(blob(abi.kvmPitState2.size, 12)),
      clock: abi.kvmClockData.decode(blob(abi.kvmClockData.size, 13)),
      devices: { cmos: { ram: blob(128, 14), index: 3 }, serial: { ier: 1, rx: new Uint8Array() } },
    },
  };
}

/** A complete manifest of one fragment covering `pages` pages. */
export function manifestFor(pages: number, fragPath: string, footerCrc: number): Manifest {
  return {
    dcresVersion: "0.1.0",
    id: [...CHECKPOINT_ID].map((b) => b.toString(16).padStart(2, "0")).join(""),
    vm: "vm1",
    generation: 3,
    parent: null,
    createdAt: "2025-01-01T00:00:00.000Z",
    mode: "stop",
    compressed: false,
    machine: machineState(pages * PAGE),
    fragments: [{ path: fragPath, host: "main", generation: 3, footerCrc, pages, bytes: 0 }],
    pageMap: Uint32Array.of(0, pages, 0),
    prefetchOrder: Uint32Array.from({ length: pages }, (_, i) => pages - 1 - i),
    stats: {
      pagesSaved: 6,
      zeroPages: 2,
      pagesReused: 0,
      pagesSavedTwice: 1,
      bytesWritten: 7 * PAGE,
      rounds: 1,
      downtimeMs: 1.25,
      totalMs: 3.5,
    },
  };
}

/** A fresh temp dir, removed after `fn`. */
export async function withTempDir(fn: (dir: string) => Promise<void> | void): Promise<void> {
  const dir = Deno.makeTempDirSync({ prefix: "dcres-ckpt-corrupt-" });
  try {
    await fn(dir);
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
}
