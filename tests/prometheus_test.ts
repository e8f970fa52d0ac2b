/** The Prometheus text format (codec/prometheus.ts): HELP and TYPE lines, labels escaped. */
import { assertEquals } from "./helpers/assert.ts";
import { metricFamily } from "../src/codec/prometheus.ts";

Deno.test("a metric family has its HELP and TYPE, one line per sample, label values escaped", () => {
  assertEquals(
    metricFamily("dcres_x_total", "counter", "Xs.", [
      { value: 3 },
      { labels: { vm: 'a"b\\c\nd', host: "h" }, value: 1.5 },
    ]),
    [
      "# HELP dcres_x_total Xs.",
      "# TYPE dcres_x_total counter",
      "dcres_x_total 3",
      'dcres_x_total{vm="a\\"b\\\\c\\nd",host="h"} 1.5',
    ],
  );
  assertEquals(metricFamily("dcres_y", "gauge", "Ys.", []).length, 2);
});
