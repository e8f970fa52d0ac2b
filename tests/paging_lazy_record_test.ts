/**
 * The record of a lazy load under way (`VM.lazy`): read back as written, from the newer of its two
 * slots whose checksum holds (an update cut short leaves the other), and refused by name, with what
 * to do, for each way the file can be bad; a store whose record is bad does not open.
 */
import { assertEquals, assertThrows } from "./helpers/assert.ts";
import { withDir } from "./helpers/page_fixture.ts";
import {
  decodeLazyRecord,
  encodeLazyRecord,
  encodeLazySlot,
  LAZY_HEADER,
  LAZY_VERSION,
  lazyLayout,
  MAX_SOURCE_BYTES,
  SLOT_HEADER,
  slotOffset,
} from "../src/paging/lazy_record.ts";
import { PageStoreError, VmPageStore } from "../src/paging/page_store.ts";
import { crc32 } from "../src/ckpt/format.ts";

const MAX = 1 << 28;
const source = new TextEncoder().encode('{"ckpt":"vm/g000002","fragments":[1,3]}');

function pendingOf(pages: number, byte3 = 0b1010_0001): Uint8Array {
  const pending = new Uint8Array(Math.ceil(pages / 8));
  pending[3] = byte3;
  return pending;
}

function record(pages = 100): Uint8Array {
  return encodeLazyRecord({ pages, pending: pendingOf(pages), source });
}

/** `r` (of 100 pages) with slot update `seq` written, holding `byte3` as the bitmap's 4th byte. */
function updated(r: Uint8Array, seq: number, byte3: number): Uint8Array {
  const out = r.slice();
  out.set(
    encodeLazySlot(seq, pendingOf(100, byte3)),
    slotOffset(lazyLayout(100, source.length), seq),
  );
  return out;
}

/** `bytes` with its header checksum made right again, so a change of a field gets past it. */
function resealed(bytes: Uint8Array): Uint8Array {
  new DataView(bytes.buffer).setUint32(28, crc32(bytes.subarray(0, 28)), true);
  return bytes;
}

function refused(bytes: Uint8Array, why: string) {
  const e = assertThrows(() => decodeLazyRecord("d/VM.lazy", bytes, MAX), PageStoreError);
  const m = e.message;
  if (!m.includes(why)) throw new Error(`expected ${why}, got: ${m}`);
  if (!m.startsWith("d/VM.lazy: ")) throw new Error(`the file is not named first: ${m}`);
  if (!/restore the VM again|upgrade dcres/.test(m)) throw new Error(`no remedy given: ${m}`);
}

Deno.test("a lazy load record reads back as written, of any minor version of its major", () => {
  const r = decodeLazyRecord("VM.lazy", record(), MAX);
  assertEquals([r.pages, r.pending[3], r.seq], [100, 0b1010_0001, 0]);
  assertEquals(r.source, source);
  const newerMinor = record();
  new DataView(newerMinor.buffer).setUint16(10, LAZY_VERSION.minor + 1, true);
  assertEquals(decodeLazyRecord("VM.lazy", resealed(newerMinor), MAX).pages, 100);
});

Deno.test("a record's pending pages come from the newer slot, or the other when an update was cut short", () => {
  const two = updated(updated(record(), 1, 0b1000_0001), 2, 0b0000_0001);
  const r = decodeLazyRecord("VM.lazy", two, MAX);
  assertEquals([r.seq, r.pending[3]], [2, 0b0000_0001]);
  // Update 3 goes to slot 1's place (over update 1) and is cut short: update 2 stands.
  const torn = updated(two, 3, 0);
  const at = slotOffset(lazyLayout(100, source.length), 3);
  torn.fill(0xff, at + SLOT_HEADER + 2, at + SLOT_HEADER + 13);
  const back = decodeLazyRecord("VM.lazy", torn, MAX);
  assertEquals([back.seq, back.pending[3]], [2, 0b0000_0001]);
});

Deno.test("a lazy load record that is bad in any way is refused by name, with what to do", () => {
  const set = (off: number, v: number, size: 1 | 2 | 4 = 4) => {
    const b = record();
    const dv = new DataView(b.buffer);
    if (size === 1) dv.setUint8(off, v);
    else if (size === 2) dv.setUint16(off, v, true);
    else dv.setUint32(off, v, true);
    return b;
  };
  refused(record().subarray(0, 20), "too short for its header");
  refused(set(0, 0x58, 1), "wrong magic");
  refused(resealed(set(8, LAZY_VERSION.major + 1, 2)), "upgrade dcres on this host");
  refused(set(12, 101), "header checksum mismatch");
  refused(resealed(set(12, 0)), "of 0 pages");
  refused(resealed(set(16, MAX_SOURCE_BYTES + 1)), `over ${MAX_SOURCE_BYTES}`);
  refused(record().subarray(0, LAZY_HEADER + 5), "cut short");
  refused(new Uint8Array([...record(), 0]), "bytes past its end");
  const desc = record();
  desc[LAZY_HEADER + 2] ^= 1;
  refused(desc, "source description checksum mismatch");
  const layout = lazyLayout(100, source.length);
  const both = record();
  both[layout.slots + SLOT_HEADER] ^= 1;
  both[layout.slots + layout.slotSize + SLOT_HEADER] ^= 1;
  refused(both, "both copies of its pending bitmap fail their checksums");
});

Deno.test("a store whose lazy load record is bad or of another size does not open", () => {
  withDir((dir) => {
    VmPageStore.open(dir, "vm", 100, true).close();
    const bad = record();
    bad[LAZY_HEADER] ^= 1;
    Deno.writeFileSync(`${dir}/vm.lazy`, bad);
    assertThrows(() => VmPageStore.open(dir, "vm", 100), PageStoreError, "checksum mismatch");
    Deno.writeFileSync(`${dir}/vm.lazy`, record(200));
    assertThrows(
      () => VmPageStore.open(dir, "vm", 100),
      PageStoreError,
      "records a load of 200 pages, the store has 100",
    );
    // Started afresh, the VM's store drops the record with everything else.
    VmPageStore.open(dir, "vm", 100, true).close();
  });
});
