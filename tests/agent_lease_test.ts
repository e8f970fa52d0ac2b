/**
 * Host leases (issue 16 item 3): whatever the delays, losses and clock rates within the terms, an
 * agent has fenced itself before the coordinator takes its lease for lapsed, so no VM runs twice;
 * and heartbeats that flow keep the lease held without a gap.
 */
import fc from "fast-check";
import { assert, assertEquals, assertThrows } from "./helpers/assert.ts";
import {
  checkLeaseTerms,
  GrantedLease,
  HeldLease,
  type LeaseTerms,
  LeaseTermsError,
} from "../src/agent/lease.ts";

/**
 * One renewal: sent by the agent at real time `sent`, granted `toCoord` ms later, answered after `back` ms, or lost.
 * With the coordinator calling (`agent.lease`, agent/lease_handler.ts), `sent` is when heartbeat k
 * reached the agent, `toCoord` the trip of its answer (the grant is the answer's arrival), and
 * `back` the trip of heartbeat k+1, which carries the grant back.
 */
interface Renewal {
  sent: number;
  toCoord: number;
  back: number;
  lost: boolean;
}

/**
 * True times (ms) at which the agent has paused its VMs for good, and the coordinator takes the
 * lease for lapsed; each side's clock runs at its own rate (within the drift) from its own zero.
 */
function run(
  terms: LeaseTerms,
  clocks: { agentRate: number; agentZero: number; coordRate: number; coordZero: number },
  fenceDelay: number,
  rs: Renewal[],
) {
  const agentClock = (t: number) => clocks.agentZero + clocks.agentRate * t;
  const coordClock = (t: number) => clocks.coordZero + clocks.coordRate * t;
  const held = new HeldLease(terms);
  const granted = new GrantedLease(terms);
  // The coordinator grants in order of arrival, and never after it took the lease for lapsed (the
  // host must be admitted again, in a new epoch).
  const grants = rs.map((r) => ({ ...r, at: r.sent + r.toCoord })).sort((a, b) => a.at - b.at);
  const taken: typeof grants = [];
  for (const g of grants) {
    if (taken.length && granted.lapsed(coordClock(g.at))) break;
    granted.grant(coordClock(g.at));
    taken.push(g);
  }
  const lapsedAt = (granted.lapsedAt - clocks.coordZero) / clocks.coordRate;
  // The agent holds the lease from a reply's arrival to that grant's lapse on its clock (a late
  // reply may hold it again for a while), and pauses its VMs at most `fenceDelay` after its last
  // lapse. With no reply it never held the lease, and its VMs never ran under it.
  let fencedAt = -Infinity;
  const replies = taken.filter((g) => !g.lost).map((g) => ({ ...g, arrives: g.at + g.back }))
    .sort((a, b) => a.arrives - b.arrives);
  for (const r of replies) {
    held.granted(agentClock(r.sent), 1);
    const lapse = (held.until - clocks.agentZero) / clocks.agentRate;
    if (lapse > r.arrives) fencedAt = Math.max(fencedAt, lapse + fenceDelay);
  }
  return { fencedAt, lapsedAt, held };
}

/** A number in [min, max], at one of its ends half the time: the unsafe cases sit at the ends. */
const edgy = (min: number, max: number) =>
  fc.oneof(fc.constantFrom(min, max), fc.double({ min, max, noNaN: true }));

const terms = fc.record({
  ttlMs: fc.integer({ min: 100, max: 20_000 }),
  drift: edgy(0, 0.2),
  fenceMs: fc.oneof(fc.constant(0), fc.integer({ min: 0, max: 3_000 })),
});

Deno.test("an agent has fenced itself before the coordinator takes its lease for lapsed, whatever the delays, losses and clock rates", () => {
  fc.assert(
    fc.property(
      terms,
      fc.record({ agent: edgy(-1, 1), coord: edgy(-1, 1), fence: edgy(0, 1) }),
      fc.record({
        agent: fc.integer({ min: -1e9, max: 1e9 }),
        coord: fc.integer({ min: -1e9, max: 1e9 }),
      }),
      fc.array(
        fc.record({
          sent: fc.integer({ min: 0, max: 60_000 }),
          toCoord: fc.oneof(fc.constant(0), fc.integer({ min: 0, max: 30_000 })),
          back: fc.integer({ min: 0, max: 30_000 }),
          lost: fc.boolean(),
        }),
        { minLength: 1, maxLength: 30 },
      ),
      (t, share, zero, rs) => {
        const clocks = {
          agentRate: 1 + share.agent * t.drift,
          agentZero: zero.agent,
          coordRate: 1 + share.coord * t.drift,
          coordZero: zero.coord,
        };
        const { fencedAt, lapsedAt } = run(t, clocks, share.fence * t.fenceMs, rs);
        assert(
          fencedAt <= lapsedAt + 1e-6,
          `the agent fenced at ${fencedAt} ms, after the coordinator took its lease for lapsed at ${lapsedAt} ms`,
        );
      },
    ),
    { numRuns: 5000 },
  );
});

Deno.test("heartbeats that arrive in time keep the lease held with no gap", () => {
  fc.assert(
    fc.property(
      terms,
      edgy(-1, 1),
      fc.integer({ min: -1e9, max: 1e9 }),
      fc.integer({ min: 2, max: 20 }),
      (t, skew, zero, beats) => {
        // A heartbeat every third of the ttl, granted and answered within a tenth of it each way.
        const rate = 1 + skew * t.drift, every = t.ttlMs / 3, delay = t.ttlMs / 10;
        const agentClock = (real: number) => zero + rate * real;
        const held = new HeldLease(t);
        for (let i = 0; i < beats - 1; i++) {
          held.granted(agentClock(i * every), 1);
          const next = (i + 1) * every + 2 * delay;
          assert(held.holds(agentClock(next)), `the lease lapsed before beat ${i + 1} came back`);
        }
      },
    ),
    { numRuns: 2000 },
  );
});

Deno.test("a grant of an older epoch does not extend the lease, and terms that cannot keep the promise are refused in one line", () => {
  const t = { ttlMs: 1000, drift: 0, fenceMs: 0 };
  const held = new HeldLease(t);
  assert(!held.holds(0), "held before any grant");
  held.granted(0, 2);
  assertEquals(held.until, 1000);
  held.granted(500, 1);
  assertEquals(held.until, 1000, "an overtaken grant extended the lease");
  assertEquals(held.epoch, 2);
  const granted = new GrantedLease({ ttlMs: 1000, drift: 0.01, fenceMs: 500 });
  assert(granted.lapsed(-1e12), "a lease never granted is lapsed");
  granted.grant(100);
  assert(!granted.lapsed(100 + 1515 - 1e-3), "taken for lapsed before ttl and fencing passed");
  assert(granted.lapsed(100 + 1515));
  for (
    const [bad, says] of [
      [{ ttlMs: 0, drift: 0, fenceMs: 0 }, "ttl"],
      [{ ttlMs: 10, drift: 0.5, fenceMs: 0 }, "drift"],
      [{ ttlMs: 10, drift: 0, fenceMs: -1 }, "fencing"],
    ] as const
  ) {
    const e = assertThrows(() => checkLeaseTerms(bad), LeaseTermsError);
    assert(e.message.includes(says) && !e.message.includes("\n"), e.message);
  }
});
