/**
 * Where checkpoint copies go (issue 15): a one-host VM's among the peers that answered, a split
 * VM's round its hosts, spread over zones when they are labelled and never two on one host; and
 * the agent's membership settings, refused in one line when they are bad.
 */
import { assertEquals, assertThrows } from "./helpers/assert.ts";
import { pickCopyHosts, zonedPlacement } from "../src/paging/copy_placement.ts";
import { ringPlacement } from "../src/paging/split_replicas.ts";
import { membershipOf } from "../src/agent/peers.ts";
import { ConfigError } from "../src/rpc/errors.ts";
import type { PeerInfo } from "../src/ckpt/control.ts";

const peer = (host: string, freeBytes: number, zone?: string): PeerInfo => ({
  host,
  addr: `${host}:7400`,
  freeBytes,
  ...(zone ? { zone } : {}),
});

Deno.test("a one-host VM's copies go to the peers with the most free store, never to itself", () => {
  const peers = [peer("a", 10), peer("self", 99), peer("b", 30), peer("c", 20)];
  assertEquals(pickCopyHosts(peers, 2, { host: "self" }).map((p) => p.host), ["b", "c"]);
  assertEquals(pickCopyHosts(peers, 9, { host: "self" }).map((p) => p.host), ["b", "c", "a"]);
  assertEquals(pickCopyHosts([peer("b", 1), peer("b", 5)], 2, { host: "x" }).length, 1);
});

Deno.test("a one-host VM's copies go to other zones first, then where the previous copies are", () => {
  const peers = [peer("a", 50, "z1"), peer("b", 10, "z2"), peer("c", 40, "z3"), peer("d", 90)];
  // This host is in z1: b and c are in zones holding nothing yet; then the free space decides.
  assertEquals(pickCopyHosts(peers, 2, { host: "s", zone: "z1" }).map((p) => p.host), ["c", "b"]);
  assertEquals(pickCopyHosts(peers, 3, { host: "s", zone: "z1" }).map((p) => p.host), [
    "c",
    "b",
    "d",
  ]);
  // The previous generation's holder keeps the chain, whatever its zone.
  assertEquals(
    pickCopyHosts(peers, 1, { host: "s", zone: "z1" }, ["a"]).map((p) => p.host),
    ["a"],
  );
});

Deno.test("a split VM's copies go round the ring without zones, and to other zones with them", () => {
  assertEquals(zonedPlacement([undefined, undefined, undefined], 2), ringPlacement(3, 2));
  // Main and sub 1 in zone a, subs 2 and 3 in zone b: every copy lands in the other zone, and
  // each host holds one copy.
  const p = zonedPlacement(["a", "a", "b", "b"], 2);
  assertEquals(p, [[2], [3], [0], [1]]);
  const zones = ["a", "a", "b", "b", "c"];
  for (const [k, to] of zonedPlacement(zones, 3).entries()) {
    assertEquals(new Set([k, ...to]).size, 3, `copies of ${k} share a host: ${to}`);
    assertEquals(new Set([k, ...to].map((j) => zones[j])).size, 3, `zones of ${k}: ${to}`);
  }
  assertThrows(() => zonedPlacement(["a", "b"], 3), Error, "at most 2");
});

Deno.test("an agent's bad --peers, --zone or --replicas is refused in one line naming it", () => {
  const where = { peers: "--peers", zone: "--zone", replicas: "--replicas" };
  assertEquals(
    membershipOf({ peers: "10.0.0.2:7400,h3:7400", zone: "rack-1", replicas: "3" }, where),
    {
      peers: ["10.0.0.2:7400", "h3:7400"],
      zone: "rack-1",
      replicas: 3,
    },
  );
  const bad: Array<[Record<string, unknown>, string]> = [
    [{ peers: "10.0.0.2" }, '--peers: peer "10.0.0.2" has no port'],
    [{ peers: { a: 1 } }, "--peers: give the other agents as HOST:PORT"],
    [{ peers: ["h:1", 7] }, '--peers: peer "7" has no port'],
    [{ zone: "../x" }, '--zone "../x" is not a zone'],
    [{ zone: 5 }, "--zone (a number) is not a zone"],
    [{ replicas: "0" }, '--replicas "0": give a whole number of copies from 1 to 16'],
    [{ replicas: 2.5 }, "--replicas 2.5: give a whole number"],
  ];
  for (const [v, msg] of bad) {
    const e = assertThrows(() => membershipOf(v, where), ConfigError);
    assertEquals(e.message.split("\n").length, 1);
    assertEquals(e.message.startsWith(msg), true, `${e.message} (wanted ${msg})`);
  }
});
