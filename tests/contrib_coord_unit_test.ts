/**
 * The coordinator's systemd unit (contrib/systemd/dcres-coord.service) as it ships: systemd accepts
 * it and rates its exposure low; the example config beside it is one the coordinator accepts.
 */
import { assertEquals } from "./helpers/assert.ts";
import { assertUnitExposure, assertUnitVerifies } from "./helpers/systemd_unit.ts";
import { parseCoordConfig } from "../src/coord/config.ts";

const UNIT = new URL("../contrib/systemd/dcres-coord.service", import.meta.url).pathname;
const EXAMPLE = new URL("../contrib/systemd/coord.json.example", import.meta.url).pathname;
/** The most `systemd-analyze security` may rate the unit: it needs no capability or device. */
const MAX_EXPOSURE = 2.5;

Deno.test("systemd-analyze verify accepts the coordinator's unit", () => assertUnitVerifies(UNIT));

Deno.test(
  `systemd-analyze security rates the coordinator's unit ${MAX_EXPOSURE.toFixed(1)} or lower`,
  () => assertUnitExposure(UNIT, MAX_EXPOSURE),
);

Deno.test("the example coordinator config is accepted", () => {
  const c = parseCoordConfig(Deno.readTextFileSync(EXAMPLE), EXAMPLE);
  assertEquals(c.agents.length, 3);
});
