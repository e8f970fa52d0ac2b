/**
 * Agent addresses written HOST:PORT: a host name or IPv4 address and a port (`host-a:7400`,
 * `127.0.0.2:7400`), or an IPv6 address in brackets (`[::1]:7400`). An IPv6 address without
 * brackets is refused, since its last group cannot be told from a port.
 */

/** A parsed HOST:PORT. */
export interface HostPort {
  /** Host name, IPv4 address, or IPv6 address without its brackets. */
  hostname: string;
  /** Port number. */
  port: number;
}

/** An address that is not HOST:PORT; the message is one line naming the input. */
export class AddressError extends Error {
  constructor(
    /** The address as given. */
    readonly input: string,
    /** What is wrong with it. */
    readonly problem: string,
  ) {
    super(`"${input}" ${problem}`);
    this.name = "AddressError";
  }
}

const NAME = /^[A-Za-z0-9._-]+$/;
const IPV6 = /^[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*(%[A-Za-z0-9._-]+)?$/;

/**
 * Parses `host:port` or `[v6]:port` (ports 1 to 65535; 0 too with `anyPort`, a listener's "any
 * free port"); throws {@link AddressError} for anything else, a bare IPv6 address among them.
 */
export function parseHostPort(addr: string, opts: { anyPort?: boolean } = {}): HostPort {
  const fail = (problem: string): never => {
    throw new AddressError(addr, problem);
  };
  let hostname: string, port: string;
  if (addr.startsWith("[")) {
    const close = addr.indexOf("]");
    if (close < 0) fail("has no closing bracket; write [IPV6]:PORT");
    hostname = addr.slice(1, close);
    if (!IPV6.test(hostname)) fail(`is not [IPV6]:PORT: ${hostname || "nothing"} in the brackets`);
    const rest = addr.slice(close + 1);
    if (!rest) fail("has no port; write [IPV6]:PORT");
    if (!rest.startsWith(":")) fail("is not [IPV6]:PORT: expected a colon after the bracket");
    port = rest.slice(1);
  } else {
    const colon = addr.lastIndexOf(":");
    if (colon < 0) fail("has no port; write HOST:PORT");
    hostname = addr.slice(0, colon);
    port = addr.slice(colon + 1);
    if (hostname.includes(":")) {
      fail(`is an IPv6 address without brackets; write [IPV6]:PORT, e.g. [::1]:7400`);
    }
    if (!NAME.test(hostname)) fail(`is not HOST:PORT: ${hostname || "no host"} before the port`);
  }
  if (!port) fail("has no port; write HOST:PORT");
  if (!/^\d+$/.test(port)) fail(`is not HOST:PORT: port ${port} is not a number`);
  const n = Number(port);
  const min = opts.anyPort ? 0 : 1;
  if (n < min || n > 65535) fail(`has port ${port}, outside ${min} to 65535`);
  return { hostname, port: n };
}

/** `h` written as HOST:PORT, an IPv6 address in brackets: what {@link parseHostPort} reads. */
export function formatHostPort(h: HostPort): string {
  return h.hostname.includes(":") ? `[${h.hostname}]:${h.port}` : `${h.hostname}:${h.port}`;
}

/** True when {@link parseHostPort} accepts `addr`. */
export function isHostPort(addr: string): boolean {
  try {
    parseHostPort(addr);
    return true;
  } catch {
    return false;
  }
}
