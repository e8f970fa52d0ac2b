/**
 * Fuzzing of what the coordinator reads back from its store (a damaged file, an etcd another
 * program writes to) and of `--store etcd://...`: random bytes and mutated valid encodings never
 * make a decoder throw anything but its own typed error, within the fuzz time bound.
 */
import fc from "fast-check";
import { parseEtcdUrl } from "../src/coord/etcd_client.ts";
import { decodeEvent, decodeRecord } from "../src/coord/records.ts";
import { StateCorruptError, StateStoreError } from "../src/coord/state.ts";
import { properties, type Target, TIME_LIMIT_MS } from "./helpers/fuzz_targets.ts";

const json = (x: unknown) => new TextEncoder().encode(JSON.stringify(x));
const host = fc.constantFrom("127.0.0.2:7400", "h1", "[::1]:7400", "", "a/b", "x".repeat(300));
const time = fc.oneof(fc.nat(), fc.constant(-1), fc.constant(2 ** 60), fc.double());

const TARGETS: Target[] = [
  {
    name: "coord-record",
    decode: (b) => decodeRecord("checkpoint", "vm1/0123abcd", b, "fuzz"),
    typed: [StateCorruptError],
    valid: fc.record({
      vm: fc.constantFrom("vm1", "vm2", "../x"),
      id: fc.constantFrom("0123abcd", "XYZ"),
      generation: fc.oneof(fc.nat(1_000_000), fc.constant(-1)),
      timeMs: time,
      hosts: fc.array(host, { maxLength: 70 }),
    }).map(json),
  },
  {
    name: "coord-event",
    decode: (b) => decodeEvent(b, "fuzz", 1),
    typed: [StateCorruptError],
    valid: fc.record({
      kind: fc.constantFrom("restored", "host-down", "Bad kind", ""),
      timeMs: time,
      vm: fc.option(fc.constantFrom("vm1", "/etc"), { nil: undefined }),
      host: fc.option(host, { nil: undefined }),
      recoveryMs: fc.option(time, { nil: undefined }),
      detail: fc.option(fc.string({ maxLength: 1200 }), { nil: undefined }),
    }).map(json),
  },
  {
    name: "etcd-url",
    decode: (b) => parseEtcdUrl(new TextDecoder().decode(b)),
    typed: [StateStoreError],
    valid: fc.array(
      fc.constantFrom("127.0.0.1:2379", "[::1]:2379", "e:1", "e", "e:0", "e:2379/p"),
      {
        minLength: 1,
        maxLength: 20,
      },
    ).map((eps) => new TextEncoder().encode(`etcd://${eps.join(",")}`)),
  },
];

for (const t of TARGETS) {
  for (const [name, prop] of properties(t)) {
    Deno.test(`fuzz ${name}: only ${t.typed.map((c) => c.name).join(" or ")}, each within ${TIME_LIMIT_MS} ms`, async () => {
      await fc.assert(prop, { numRuns: 100 });
    });
  }
}
