/** Host states from heartbeats: suspect after a silence, down only after a longer one and the lease's lapse. */
import { assertEquals } from "./helpers/assert.ts";
import { type HostView, nextHostState } from "../src/coord/host_state.ts";

const T = { suspectMs: 1000, downMs: 3000 };
const view = (over: Partial<HostView>): HostView => ({
  state: "up",
  lastOkAt: 0,
  answered: false,
  leaseLapsed: true,
  ...over,
});

Deno.test("a host that answers is up, whatever it was", () => {
  for (const state of ["up", "suspect", "down"] as const) {
    assertEquals(nextHostState(view({ state, answered: true }), 10_000, T), "up");
  }
});

Deno.test("a silent host stays up until the suspect time, then is suspect", () => {
  assertEquals(nextHostState(view({}), 999, T), "up");
  assertEquals(nextHostState(view({}), 1000, T), "suspect");
  assertEquals(nextHostState(view({ state: "suspect" }), 2999, T), "suspect");
});

Deno.test("a silent host is down only once both the down time has passed and its lease has lapsed", () => {
  assertEquals(nextHostState(view({ state: "suspect" }), 3000, T), "down");
  assertEquals(nextHostState(view({ state: "suspect", leaseLapsed: false }), 60_000, T), "suspect");
  assertEquals(nextHostState(view({ state: "up", leaseLapsed: false }), 60_000, T), "suspect");
  assertEquals(nextHostState(view({ state: "suspect", lastOkAt: 1000 }), 3999, T), "suspect");
});

Deno.test("a down host stays down until it answers again", () => {
  assertEquals(nextHostState(view({ state: "down", leaseLapsed: false }), 1, T), "down");
});
