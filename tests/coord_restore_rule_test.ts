/**
 * The placement rule of the coordinator's restores (issue 16 item 3): the checkpoint's split shape
 * when enough hosts are up, fewer sub-hosts when not, one host when only one is up; every part of
 * the checkpoint goes to a chosen host; a host holding a whole copy of a part is preferred for it.
 */
import fc from "fast-check";
import { assert, assertEquals } from "./helpers/assert.ts";
import { chooseRestoreTargets, type RestoreRuleInput } from "../src/coord/restore_rule.ts";

const base = (up: string[], held: RestoreRuleInput["held"] = {}): RestoreRuleInput => ({
  mainRole: "n1",
  subRoles: ["n2", "n3", "n4"],
  roleBytes: { n1: 400, n2: 300, n3: 200, n4: 100 },
  up,
  held,
  previous: ["a1", "a2", "a3", "a4"],
});

Deno.test("a main host's failure: the same shape on the survivors, each part where its copy is", () => {
  // a1 (main) died; a2..a4 survive with the sub parts, a2 also holds the main part's copy.
  const c = chooseRestoreTargets(base(["a2", "a3", "a4", "a5"], {
    a2: { n2: 300, n1: 400 },
    a3: { n3: 200, n2: 300 },
    a4: { n4: 100, n3: 200 },
    a5: { n4: 100 },
  }))!;
  assertEquals(c.main, "a2");
  assertEquals(c.assign, { n1: "a2", n2: "a3", n3: "a4", n4: "a5" });
  assertEquals(c.subs, ["a3", "a4", "a5"]);
});

Deno.test("too few hosts: fewer sub-hosts, then one host", () => {
  const two = chooseRestoreTargets(base(["a2", "a3"], { a2: { n1: 400 }, a3: { n2: 300 } }))!;
  assertEquals(two.main, "a2");
  assertEquals(two.subs, ["a3"]);
  assertEquals(new Set(Object.values(two.assign)), new Set(["a3"]).add("a2"));
  const one = chooseRestoreTargets(base(["a5"]))!;
  assertEquals(one, { main: "a5", subs: [], assign: { n1: "a5", n2: "a5", n3: "a5", n4: "a5" } });
  assertEquals(chooseRestoreTargets(base([])), undefined);
});

Deno.test("property: the shape, the parts and the preference hold for any hosts and copies", () => {
  const hostsArb = fc.uniqueArray(fc.constantFrom<string>("a1", "a2", "a3", "a4", "a5", "a6"), {
    minLength: 1,
  });
  const rolesArb = fc.integer({ min: 0, max: 5 });
  fc.assert(fc.property(hostsArb, rolesArb, fc.array(fc.nat(), { minLength: 36, maxLength: 36 }), (
    up,
    nSubs,
    bytes,
  ) => {
    const roles = ["m", ...Array.from({ length: nSubs }, (_, i) => `s${i}`)];
    const held: RestoreRuleInput["held"] = {};
    up.forEach((a, i) =>
      roles.forEach((r, j) => {
        const b = bytes[(i * 6 + j) % bytes.length] % 3;
        if (b) (held[a] ??= {})[r] = b;
      })
    );
    const input: RestoreRuleInput = {
      mainRole: "m",
      subRoles: roles.slice(1),
      roleBytes: Object.fromEntries(roles.map((r, j) => [r, 1 + (bytes[j] % 7)])),
      up,
      held,
      previous: ["a1", "a2"],
    };
    const c = chooseRestoreTargets(input)!;
    assert(up.includes(c.main));
    assert(!c.subs.includes(c.main));
    assertEquals(new Set(c.subs).size, c.subs.length);
    assert(c.subs.every((a) => up.includes(a)));
    assertEquals(c.subs.length, Math.min(nSubs, up.length - 1));
    assertEquals(c.assign.m, c.main);
    for (const r of roles) assert([c.main, ...c.subs].includes(c.assign[r]), r);
    for (const s of c.subs) assert(Object.values(c.assign).includes(s), `${s} takes no part`);
    // The main part goes to a host holding the most of it.
    const most = Math.max(...up.map((a) => held[a]?.m ?? 0));
    assertEquals(held[c.main]?.m ?? 0, most);
    assertEquals(chooseRestoreTargets(input), c);
  }));
});
