/** Minimal assertions (JSR's @std/assert is not reachable from these machines). */
import { deepStrictEqual, ok } from "node:assert";

/** Deep equality with a readable diff. */
export function assertEquals<T>(actual: T, expected: T, msg?: string): void {
  deepStrictEqual(actual, expected, msg);
}

/** Truthiness. */
export function assert(cond: unknown, msg?: string): asserts cond {
  ok(cond, msg);
}

/** The function throws an error of `cls` whose message includes `includes`. */
export function assertThrows(
  fn: () => unknown,
  cls?: new (...args: never[]) => Error,
  includes?: string,
): Error {
  try {
    fn();
  } catch (e) {
    checkError(e, cls, includes);
    return e as Error;
  }
  throw new Error("expected the function to throw");
}

/** The promise rejects with an error of `cls` whose message includes `includes`. */
export async function assertRejects(
  fn: () => Promise<unknown>,
  cls?: new (...args: never[]) => Error,
  includes?: string,
): Promise<Error> {
  try {
    await fn();
  } catch (e) {
    checkError(e, cls, includes);
    return e as Error;
  }
  throw new Error("expected the promise to reject");
}

function checkError(e: unknown, cls?: new (...args: never[]) => Error, includes?: string) {
  if (cls && !(e instanceof cls)) {
    throw new Error(
      `expected ${cls.name}, got ${e instanceof Error ? e.name + ": " + e.message : e}`,
    );
  }
  if (includes && !(e instanceof Error && e.message.includes(includes))) {
    throw new Error(`expected message to include "${includes}", got "${(e as Error).message}"`);
  }
}

/** Whether two byte arrays hold the same bytes. */
export function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && a.every((x, i) => x === b[i]);
}
