/** Agent RPC arguments are validated against valibot schemas before a handler runs (issue 14 item 4). */
import { assertEquals, assertRejects } from "./helpers/assert.ts";
import { AGENT_SCHEMAS, validated } from "../src/agent/schemas.ts";
import { AGENT_ACCESS } from "../src/agent/access.ts";
import type { RpcContext } from "../src/rpc/dispatcher.ts";
import { RpcError } from "../src/rpc/errors.ts";

const ctx = {} as RpcContext;

Deno.test("malformed arguments of ckpt, page and vm.start methods are refused in one line before the handler", async () => {
  let ran = 0;
  const ok = () => Promise.resolve(++ran);
  const h = validated(Object.fromEntries(Object.keys(AGENT_SCHEMAS).map((m) => [m, ok])));
  const bad: Array<[string, Record<string, unknown>, string]> = [
    ["ckpt.put", { store: "s", file: "g1/a.frag" }, "ckpt.put: bytes:"],
    ["ckpt.put", { store: "s", file: "a", bytes: -1 }, "ckpt.put: bytes:"],
    ["ckpt.put", { store: 7, file: "a", bytes: 1 }, "ckpt.put: store:"],
    ["ckpt.get", { store: "s", file: "x".repeat(5000) }, "ckpt.get: file:"],
    [
      "ckpt.merge.part",
      { store: "s", generation: "g", newGeneration: 2, host: "h", id: "zz" },
      "ckpt.merge.part: id:",
    ],
    ["ckpt.have", { store: "s", files: [1] }, "ckpt.have: files.0:"],
    ["pages.open", { vm: "v", pages: 1.5 }, "pages.open: pages:"],
    ["pages.channel", { vm: 7, pages: 1 }, "pages.channel: vm:"],
    ["checkpoint", { name: "v", mode: "fast" }, "checkpoint: mode:"],
    ["checkpoint", { name: "v", keep: 0 }, "checkpoint: keep:"],
    ["ckpt.prune", { store: "s", keep: [-1], upTo: 1 }, "ckpt.prune: keep.0:"],
    ["ckpt.prune", { store: "s", keep: [1] }, "ckpt.prune: upTo:"],
    ["ckpt.gc", { keep: 1.5 }, "ckpt.gc: keep:"],
    ["vm.exec", { name: "v" }, "vm.exec: cmd:"],
    ["vm.start", { spec: "linux" }, "vm.start: spec:"],
    ["vm.start", { spec: { name: "a" }, forMs: "soon" }, "vm.start: forMs:"],
  ];
  for (const [m, args, prefix] of bad) {
    const e = await assertRejects(async () => await h[m](args, ctx), RpcError);
    assertEquals((e as RpcError).code, "bad-request");
    assertEquals(e.message.startsWith(prefix), true, `${m}: ${e.message}`);
    assertEquals(e.message.includes("\n"), false);
  }
  assertEquals(ran, 0);
  await h["ckpt.put"]({ store: "s", file: "g1/a.frag", bytes: 10 }, ctx);
  await h["vm.start"]({ spec: { name: "a", memSize: 1 << 20, kernel: "k" }, accel: "emu" }, ctx);
  await h["pages.open"]({ vm: "v", pages: 4, hold: [[0, 1]] }, ctx);
  assertEquals(ran, 3);
});

Deno.test("every method an agent serves over the network has an argument schema", () => {
  const missing = Object.keys(AGENT_ACCESS).filter((m) => !(m in AGENT_SCHEMAS));
  assertEquals(missing, [], `methods without a schema: ${missing.join(", ")}`);
});
