/**
 * What a host's heartbeat report does to placements: a VM it runs is placed there, one its placed
 * main no longer reports is unplaced, but one whose VMM did not answer in time stays placed (a hung
 * VMM says nothing about where its VM is); one running where its failed main was placed is adopted.
 */
import { assertEquals } from "./helpers/assert.ts";
import { HostWatch } from "../src/coord/host_watch.ts";
import type { LeasedVm } from "../src/agent/lease_handler.ts";
import { placementOps } from "../src/coord/placement_report.ts";
import type { Placement, Versioned } from "../src/coord/state.ts";

const TERMS = { ttlMs: 4000, drift: 0.05, fenceMs: 1000 };

function host(n: number, vms: LeasedVm[], unanswered: string[] = []): HostWatch {
  const h = new HostWatch(`node${n}`, `127.0.0.${n + 1}:7400`, TERMS, 1, performance.now());
  h.state = "up";
  h.vms = vms;
  h.unanswered = unanswered;
  h.certHost = `node${n}`;
  return h;
}

function placed(...ps: Array<[string, string]>): Map<string, Versioned<Placement>> {
  return new Map(ps.map(([vm, main], i) => [vm, { value: { vm, main, subs: [] }, rev: i + 1 }]));
}

const running = (name: string): LeasedVm => ({ name, state: "running" });

Deno.test("a VM its placed main no longer reports is unplaced; one whose VMM did not answer stays placed", () => {
  const h = host(1, [running("a")], ["hung"]);
  const p = placed(["a", h.addr], ["hung", h.addr], ["gone", h.addr]);
  const ops = placementOps(h, [h], p, () => false);
  assertEquals(ops, [[{ op: "delete", kind: "placement", key: "gone" }]]);
  assertEquals([...p.keys()], ["a", "hung"]);
});

Deno.test("a VM reported where it is not placed is placed there; a VM being restored is left alone", () => {
  const h1 = host(1, [running("new"), running("busy")]);
  const ops = placementOps(h1, [h1], placed(), (vm) => vm === "busy");
  assertEquals(ops, [[{
    op: "put",
    kind: "placement",
    value: { vm: "new", main: h1.addr, subs: [] },
  }]]);
});

Deno.test("a VM running where its failed main was placed is adopted there, a fenced copy is not", () => {
  const h1 = host(1, []),
    h2 = host(2, [running("v"), {
      name: "w",
      state: "paused",
      pausedReason: "fenced: lease lapsed",
    }]);
  h1.state = "down";
  const ops = placementOps(h2, [h1, h2], placed(["v", h1.addr], ["w", h1.addr]), () => false);
  assertEquals(ops.length, 1);
  assertEquals(ops[0][0], {
    op: "put",
    kind: "placement",
    value: { vm: "v", main: h2.addr, subs: [] },
    expect: 1,
  });
  assertEquals(ops[0][1].op, "event");
});
