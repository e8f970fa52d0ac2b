/** Parsing of sizes, durations and addresses given on the command line. */
import { parseHostPort } from "../net/address.ts";

/** A command-line value is malformed; the message names the flag and an example. */
export class UsageError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "UsageError";
  }
}

const SIZE_UNITS: Record<string, number> = {
  "": 1 << 20,
  K: 1 << 10,
  M: 1 << 20,
  G: 1 << 30,
  T: 2 ** 40,
};

/** Parses `512M`, `2G`, `64K` (a bare number means MiB) into bytes. */
export function parseSize(flag: string, text: string): number {
  const m = /^(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?$/i.exec(text.trim());
  if (!m) throw new UsageError(`${flag} ${text}: not a size; use e.g. 256M or 1G`);
  const bytes = Math.round(Number(m[1]) * SIZE_UNITS[m[2].toUpperCase()]);
  if (bytes <= 0) throw new UsageError(`${flag} ${text}: must be more than zero`);
  return bytes;
}

const DURATION_UNITS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 };

/** Parses `50ms`, `30s`, `2m`, `1h` (a bare number means seconds) into milliseconds. */
export function parseDuration(flag: string, text: string): number {
  const m = /^(\d+(?:\.\d+)?)\s*(ms|s|m|h)?$/.exec(text.trim());
  if (!m) throw new UsageError(`${flag} ${text}: not a duration; use e.g. 50ms, 30s or 2m`);
  const ms = Number(m[1]) * DURATION_UNITS[m[2] ?? "s"];
  if (ms <= 0) throw new UsageError(`${flag} ${text}: must be more than zero`);
  return ms;
}

/** Checks that `addr`, given with `flag`, is HOST:PORT (net/address.ts) and returns it as given. */
export function checkAddress(flag: string, addr: string): string {
  try {
    parseHostPort(addr);
  } catch (e) {
    throw new UsageError(`${flag} ${(e as Error).message}`);
  }
  return addr;
}

/** Parses a positive integer flag. */
export function parseCount(flag: string, text: string): number {
  const n = Number(text);
  if (!Number.isInteger(n) || n < 1) {
    throw new UsageError(`${flag} ${text}: must be a whole number of at least 1`);
  }
  return n;
}

/** Bytes as a short human string: 1.5 GiB, 512 MiB. */
export function fmtBytes(n: number): string {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) {
    n /= 1024;
    i++;
  }
  return `${n >= 10 || i === 0 ? Math.round(n) : n.toFixed(1)} ${units[i]}`;
}
