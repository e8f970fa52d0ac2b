/** HOST:PORT, the one parser every agent address goes through (src/net/address.ts). */
import { assert, assertEquals, assertThrows } from "./helpers/assert.ts";
import { AddressError, formatHostPort, isHostPort, parseHostPort } from "../src/net/address.ts";

Deno.test("HOST:PORT: IPv4 addresses, host names and bracketed IPv6 parse", () => {
  assertEquals(parseHostPort("127.0.0.2:7400"), { hostname: "127.0.0.2", port: 7400 });
  assertEquals(parseHostPort("localhost:1"), { hostname: "localhost", port: 1 });
  assertEquals(parseHostPort("host-a.example.org:65535"), {
    hostname: "host-a.example.org",
    port: 65535,
  });
  assertEquals(parseHostPort("[::1]:7400"), { hostname: "::1", port: 7400 });
  assertEquals(parseHostPort("[fe80::1%eth0]:7400"), { hostname: "fe80::1%eth0", port: 7400 });
  assertEquals(parseHostPort("[::ffff:10.0.0.1]:80"), { hostname: "::ffff:10.0.0.1", port: 80 });
});

Deno.test("HOST:PORT: port 0 only for a listener, with anyPort", () => {
  assertEquals(parseHostPort("127.0.0.1:0", { anyPort: true }), { hostname: "127.0.0.1", port: 0 });
  assertThrows(() => parseHostPort("127.0.0.1:0"), AddressError, "outside 1 to 65535");
});

Deno.test("HOST:PORT: a missing port, a port out of range and bad input are refused in one line naming the input", () => {
  const refused: Array<[string, string]> = [
    ["127.0.0.1", "has no port"],
    ["host-a", "has no port"],
    ["host-a:", "has no port"],
    ["[::1]", "has no port"],
    ["[::1]:", "has no port"],
    ["127.0.0.1:65536", "outside 1 to 65535"],
    ["127.0.0.1:99999999", "outside 1 to 65535"],
    ["[::1]:70000", "outside 1 to 65535"],
    ["::1", "IPv6 address without brackets"],
    ["::1:7400", "IPv6 address without brackets"],
    ["fe80::1:7400", "IPv6 address without brackets"],
    ["", "has no port"],
    [":7400", "no host before the port"],
    ["host a:7400", "before the port"],
    ["a=b:7400", "before the port"],
    ["host:port", "is not a number"],
    ["host:-1", "is not a number"],
    ["host:74 00", "is not a number"],
    ["[::1:7400", "no closing bracket"],
    ["[]:7400", "nothing in the brackets"],
    ["[10.0.0.1]:7400", "in the brackets"],
    ["[::1]7400", "expected a colon"],
  ];
  for (const [input, problem] of refused) {
    const e = assertThrows(() => parseHostPort(input), AddressError, problem) as AddressError;
    assertEquals(e.input, input);
    assert(e.message.startsWith(`"${input}" `), e.message);
    assert(!e.message.includes("\n"), e.message);
    assertEquals(isHostPort(input), false, input);
  }
});

Deno.test("HOST:PORT: formatHostPort writes what parseHostPort reads, IPv6 in brackets", () => {
  for (const addr of ["127.0.0.2:7400", "host-a:1", "[::1]:7400", "[fe80::1%eth0]:9"]) {
    assert(isHostPort(addr), addr);
    assertEquals(formatHostPort(parseHostPort(addr)), addr);
  }
});
