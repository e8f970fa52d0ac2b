/** Percentiles and formatting shared by the benchmarks. */

/** p-th percentile (0..100) of `xs`. */
export function percentile(xs: number[], p: number): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil((p / 100) * s.length) - 1))];
}

/** Milliseconds with 3 significant decimals. */
export function ms(x: number): string {
  return `${x.toFixed(3)} ms`;
}

/** A ratio: two decimals, or two significant digits when it is below 0.1. */
export function ratio(x: number): string {
  return x !== 0 && Math.abs(x) < 0.1 ? x.toPrecision(2) : x.toFixed(2);
}

/** Prints one result line with its ratio to a reference. */
export function line(label: string, value: string, r?: { x: number; of: string }): void {
  console.log(
    `${label.padEnd(52)} ${value.padStart(14)}${r ? `   ${ratio(r.x)}x ${r.of}` : ""}`,
  );
}
