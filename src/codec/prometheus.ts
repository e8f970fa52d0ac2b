/** The Prometheus text exposition format: one metric family at a time, label values escaped. */

/** One sample: its labels (none for a plain value) and its value. */
export interface Sample {
  /** Label names and values. */
  labels?: Record<string, string>;
  /** The value. */
  value: number;
}

/** A label value as the format needs it: backslash, quote and newline escaped. */
function escape(s: string): string {
  return s.replace(/\\/g, "\\\\").replace(/"/g, '\\"').replace(/\n/g, "\\n");
}

/** The lines of one metric family: its HELP and TYPE, then one line per sample. */
export function metricFamily(
  name: string,
  type: "gauge" | "counter",
  help: string,
  samples: Sample[],
): string[] {
  return [
    `# HELP ${name} ${help}`,
    `# TYPE ${name} ${type}`,
    ...samples.map((s) => {
      const labels = Object.entries(s.labels ?? {}).map(([k, v]) => `${k}="${escape(v)}"`);
      return `${name}${labels.length ? `{${labels.join(",")}}` : ""} ${s.value}`;
    }),
  ];
}
