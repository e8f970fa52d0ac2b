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

/** Prints one result line with its ratio to a reference. */
export function line(label: string, value: string, ratio?: { x: number; of: string }): void {
  console.log(
    `${label.padEnd(44)} ${value.padStart(14)}${
      ratio ? `   ${ratio.x.toFixed(2)}x ${ratio.of}` : ""
    }`,
  );
}
