/** The coordinator's config: defaults filled in, and each bad field refused in one line naming it. */
import { assertEquals, assertThrows } from "./helpers/assert.ts";
import { parseCoordConfig } from "../src/coord/config.ts";
import { ConfigError } from "../src/rpc/errors.ts";

const parse = (c: unknown) => parseCoordConfig(JSON.stringify(c), "coord.json");
const agents = [{ addr: "10.0.0.11:7400" }, { name: "b", addr: "10.0.0.12:7400" }];

Deno.test("a config with only its agents gets the documented defaults", () => {
  const c = parse({ agents });
  assertEquals(c.agents, [{ name: "10.0.0.11:7400", addr: "10.0.0.11:7400" }, agents[1]]);
  assertEquals(c.store, "/var/lib/dcres-coord/coord.db");
  assertEquals([c.heartbeatMs, c.suspectMs, c.downMs], [1000, 3000, 10_000]);
  assertEquals(c.lease, { ttlMs: 10_000, drift: 0.01, fenceMs: 2000 });
});

Deno.test("policies get the documented defaults, each field given kept", () => {
  const c = parse({
    agents,
    metricsPort: 9470,
    policies: { web: { everyMs: 60_000 }, db: { everyMs: 5000, incremental: true, fullEvery: 4 } },
  });
  assertEquals(c.metricsPort, 9470);
  assertEquals(c.policies, [
    {
      vm: "web",
      everyMs: 60_000,
      mode: "cow",
      incremental: false,
      fullEvery: 0,
      keep: 10,
      replicas: 2,
    },
    {
      vm: "db",
      everyMs: 5000,
      mode: "cow",
      incremental: true,
      fullEvery: 4,
      keep: 10,
      replicas: 2,
    },
  ]);
  assertEquals(parse({ agents }).policies, []);
});

Deno.test("bad configs are refused in one line naming the field", () => {
  const bad: [unknown, string][] = [
    [{}, "agents"],
    [{ agents: [] }, "agents"],
    [{ agents: [{ addr: "nowhere" }] }, "agents.0.addr"],
    [{ agents: [agents[0], agents[0]] }, "listed twice"],
    [{ agents, heartbeatMs: -1 }, "heartbeatMs"],
    [{ agents, colour: "red" }, "colour"],
    [{ agents, lease: { drift: 0.7 } }, "drift"],
    [{ agents, heartbeatMs: 5000, lease: { ttlMs: 10_000 } }, "under 3 heartbeats"],
    [{ agents, lease: { fenceMs: 100 } }, "fenceMs"],
    [{ agents, suspectMs: 5000, downMs: 4000 }, "downMs"],
    [{ agents, metricsPort: 70000 }, "metricsPort"],
    [{ agents, policies: { v1: {} } }, "policies.v1.everyMs"],
    [{ agents, policies: { v1: { everyMs: 500 } } }, "policies.v1: policy: everyMs"],
    [{ agents, policies: { v1: { everyMs: 1000, mode: "fast" } } }, "policies.v1.mode"],
    [{ agents, policies: { v1: { everyMs: 1000, keep: 0 } } }, "policies.v1: policy: keep"],
    [{ agents, policies: { v1: { everyMs: 1000, replicas: 17 } } }, "replicas"],
    [{ agents, policies: { v1: { everyMs: 1000, every: 5 } } }, "policies.v1.every"],
    [{ agents, policies: { "../x": { everyMs: 1000 } } }, "not a VM name"],
  ];
  for (const [c, what] of bad) {
    const e = assertThrows(() => parse(c), ConfigError, what);
    assertEquals(e.message.includes("\n"), false, e.message);
  }
  assertThrows(() => parseCoordConfig("{", "coord.json"), ConfigError, "coord.json: not JSON");
});
