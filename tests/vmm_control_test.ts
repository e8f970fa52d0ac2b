import { assert, assertEquals, assertRejects } from "./helpers/assert.ts";
import { Dispatcher, type RpcHandler } from "../src/rpc/dispatcher.ts";
import { RpcError } from "../src/rpc/errors.ts";
import { UnixSocketServer } from "../src/rpc/unix_server.ts";
import { ControlError, openConsole, request, socketPath } from "../src/vmm/control/client.ts";
import { serveControlConnection } from "../src/vmm/control/transport.ts";
import { checkpointHandlers } from "../src/ckpt/control.ts";
import type { DirtyTracker } from "../src/memory/dirty_tracker.ts";
import { SplitControl } from "../src/paging/control.ts";
import type { Machine } from "../src/vmm/machine.ts";

/** A control socket for VM "vm1" in a fresh state directory, serving `handlers`. */
function serve(handlers: Record<string, RpcHandler>, afterReply = {}) {
  const stateDir = Deno.makeTempDirSync({ prefix: "dcres-control-" });
  const dispatcher = new Dispatcher(handlers);
  const server = new UnixSocketServer(
    socketPath(stateDir, "vm1"),
    (conn) =>
      serveControlConnection(conn, dispatcher, { streaming: new Set(["console"]), afterReply }),
  );
  return { stateDir, server };
}

Deno.test("on a VMM's control socket errors cross typed, progress arrives, and stop acts after its reply", async () => {
  const order: string[] = [];
  const { stateDir, server } = serve({
    count: (_a, ctx) => {
      ctx.progress({ done: 1, total: 2 });
      return Promise.resolve({ counted: 2 });
    },
    refuse: () => Promise.reject(new RpcError("bad-request", "checkpoint: dir must be absolute")),
    boom: () => Promise.reject(new Error("the guest is gone")),
    stop: () => Promise.resolve(order.push("handler") && null),
  }, { stop: () => Promise.resolve(void order.push("after")) });
  try {
    const progress: unknown[] = [];
    assertEquals(
      await request(stateDir, "vm1", { op: "count" }, (p) => progress.push(p)),
      { counted: 2 },
    );
    assertEquals(progress, [{ done: 1, total: 2 }]);
    const codeOf = async (op: string) => {
      const e = await assertRejects(() => request(stateDir, "vm1", { op }), ControlError);
      assert(e instanceof RpcError, "a control error is an RpcError");
      assert(e.message.startsWith("VM vm1: "), e.message);
      return (e as RpcError).code;
    };
    assertEquals(await codeOf("refuse"), "bad-request");
    assertEquals(await codeOf("boom"), "failed");
    assertEquals(await codeOf("nope"), "unknown-method");
    assertEquals(await request(stateDir, "vm1", { op: "stop" }), null);
    for (let i = 0; i < 50 && order.length < 2; i++) await new Promise((r) => setTimeout(r, 10));
    assertEquals(order, ["handler", "after"]);
  } finally {
    server.close();
  }
});

Deno.test("on a VMM's control socket a deadline or a caller that gives up aborts the operation", async () => {
  const aborted: string[] = [];
  let started = Promise.withResolvers<void>();
  const { stateDir, server } = serve({
    wait: (_a, ctx) =>
      new Promise((_, rej) => {
        started.resolve();
        ctx.signal.addEventListener("abort", () => {
          aborted.push((ctx.signal.reason as RpcError).code);
          rej(ctx.signal.reason);
        });
      }),
  });
  try {
    const late = await assertRejects(
      () => request(stateDir, "vm1", { op: "wait", deadlineMs: 50 }),
      ControlError,
      "wait timed out after 50 ms",
    );
    assertEquals((late as RpcError).code, "deadline-exceeded");
    started = Promise.withResolvers<void>();
    const stop = new AbortController();
    const call = request(stateDir, "vm1", { op: "wait" }, undefined, stop.signal);
    await started.promise;
    stop.abort();
    assertEquals(((await assertRejects(() => call, ControlError)) as RpcError).code, "cancelled");
    for (let i = 0; i < 50 && aborted.length < 2; i++) await new Promise((r) => setTimeout(r, 10));
    assertEquals(aborted, ["deadline-exceeded", "cancelled"]);
  } finally {
    server.close();
  }
});

Deno.test("on a VMM's control socket the console streams raw bytes both ways", async () => {
  const { stateDir, server } = serve({
    console: async (_a, ctx) => {
      await ctx.send(new TextEncoder().encode("login: "));
      for await (const b of ctx.data) await ctx.send(b.map((c) => c >= 97 ? c - 32 : c));
      return null;
    },
  });
  try {
    const { conn, output } = await openConsole(stateDir, "vm1");
    await conn.write(new TextEncoder().encode("root\n"));
    let seen = "";
    for await (const b of output) {
      seen += new TextDecoder().decode(b);
      if (seen.endsWith("ROOT\n")) break;
    }
    assertEquals(seen, "login: ROOT\n");
    conn.close();
  } finally {
    server.close();
  }
});

Deno.test("a checkpoint or split request that cannot apply reaches the caller as bad-request, not a flat failure", async () => {
  const vm = { onClose: () => {}, isStopped: false };
  const machine = { vm, spec: { name: "vm1", guest: "linux" } } as unknown as Machine;
  const { stateDir, server } = serve({
    ...checkpointHandlers(machine, {} as DirtyTracker),
    ...new SplitControl(machine, {} as DirtyTracker).handlers(),
  });
  try {
    const refused = (req: Parameters<typeof request>[2]) =>
      assertRejects(() => request(stateDir, "vm1", req), ControlError);
    const rel = await refused({ op: "checkpoint", dir: "ckpt", mode: "stop" });
    assertEquals((rel as RpcError).code, "bad-request");
    assertEquals(rel.message, "VM vm1: checkpoint: dir must be an absolute path");
    const mode = await refused({ op: "checkpoint", dir: "/tmp/x", mode: "fast" });
    assertEquals((mode as RpcError).code, "bad-request");
    const split = await refused({ op: "split", mainMemBytes: 1, subs: ["h:1"] });
    assertEquals((split as RpcError).code, "bad-request", split.message);
    assert(split.message.includes("split vm1: split VMs run memstamp guests"), split.message);
    const check = await refused({ op: "paging.check" });
    assertEquals((check as RpcError).code, "failed", "an operation that failed stays a failure");
  } finally {
    server.close();
  }
});
