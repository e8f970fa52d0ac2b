import { assertEquals, assertRejects } from "./helpers/assert.ts";
import { callLocal, LocalRpcServer } from "../src/agent/local.ts";
import { encodeControl, encodeFrame, FrameKind } from "../src/net/frame.ts";
import { FrameReader } from "../src/net/frame_reader.ts";
import type { RpcHandler } from "../src/rpc/dispatcher.ts";
import { RpcError } from "../src/rpc/errors.ts";

/** A local agent socket in a fresh directory serving `handlers`. */
function serve(handlers: Record<string, RpcHandler>) {
  const path = `${Deno.makeTempDirSync({ prefix: "dcres-local-" })}/agent.sock`;
  return { path, server: new LocalRpcServer(path, handlers) };
}

/** A handler that waits for its signal and records why it was aborted. */
function waiter(aborted: string[], started?: PromiseWithResolvers<void>): RpcHandler {
  return (_a, ctx) =>
    new Promise((_, rej) => {
      started?.resolve();
      ctx.signal.addEventListener("abort", () => {
        aborted.push((ctx.signal.reason as RpcError).code);
        rej(ctx.signal.reason);
      });
    });
}

async function settle(aborted: string[], n: number) {
  for (let i = 0; i < 100 && aborted.length < n; i++) await new Promise((r) => setTimeout(r, 10));
}

Deno.test("on the local socket DATA flows both ways, progress arrives and errors keep their code", async () => {
  const { path, server } = serve({
    echo: async (_a, ctx) => {
      ctx.progress({ started: ctx.peer });
      let bytes = 0;
      for await (const b of ctx.data) {
        bytes += b.length;
        await ctx.send(b.slice().reverse());
      }
      return { bytes };
    },
    refuse: () => Promise.reject(new RpcError("bad-request", 'argument "name" is missing')),
  });
  try {
    const back: number[][] = [];
    const progress: unknown[] = [];
    const r = await callLocal(path, "echo", {}, {
      upload: (async function* () {
        yield new Uint8Array([1, 2, 3]);
        yield new Uint8Array([4]);
      })(),
      onData: (b) => back.push([...b]),
      onProgress: (p) => progress.push(p),
    });
    assertEquals(r, { bytes: 4 });
    assertEquals(back, [[3, 2, 1], [4]]);
    assertEquals(progress, [{ started: "local" }]);
    const e = await assertRejects(() => callLocal(path, "refuse", {}), RpcError, "is missing");
    assertEquals((e as RpcError).code, "bad-request");
    const u = await assertRejects(() => callLocal(path, "nope", {}), RpcError, "unknown method");
    assertEquals((u as RpcError).code, "unknown-method");
  } finally {
    server.close();
  }
});

Deno.test("on the local socket a deadline, a cancel and a caller that hangs up each abort the handler", async () => {
  const aborted: string[] = [];
  const started = Promise.withResolvers<void>();
  const hungUp = Promise.withResolvers<void>();
  const { path, server } = serve({
    late: waiter(aborted),
    wait: waiter(aborted, started),
    held: waiter(aborted, hungUp),
  });
  try {
    const late = await assertRejects(() => callLocal(path, "late", {}, { deadlineMs: 100 }));
    assertEquals((late as RpcError).code, "deadline-exceeded");
    await settle(aborted, 1);
    assertEquals(aborted, ["deadline-exceeded"]);

    const stop = new AbortController();
    const call = callLocal(path, "wait", {}, { signal: stop.signal });
    await started.promise;
    stop.abort();
    assertEquals(((await assertRejects(() => call)) as RpcError).code, "cancelled");
    await settle(aborted, 2);
    assertEquals(aborted[1], "cancelled");

    const conn = await Deno.connect({ transport: "unix", path });
    await conn.write(encodeControl({ v: 1, id: 7, method: "held", deadlineMs: 60_000 }));
    await hungUp.promise;
    conn.close();
    await settle(aborted, 3);
    assertEquals(aborted[2], "cancelled");
  } finally {
    server.close();
  }
});

Deno.test("on the local socket calls on one connection are answered in turn, and garbage gets an error line", async () => {
  const { path, server } = serve({ health: (a) => Promise.resolve(a.n) });
  const conn = await Deno.connect({ transport: "unix", path });
  try {
    const replies = new FrameReader(conn.readable);
    const reply = async () => {
      const m = await replies.message();
      return [m?.id, m?.ok, m?.ok ? m.result : (m?.error as { code: string }).code];
    };
    await conn.write(encodeControl({ v: 1, id: 1, method: "health", args: { n: 1 } }));
    await conn.write(encodeControl({ v: 1, id: 2, method: "health", args: { n: 2 } }));
    assertEquals(await reply(), [1, true, 1]);
    assertEquals(await reply(), [2, true, 2]);
    await conn.write(encodeFrame(FrameKind.CONTROL, new Uint8Array([0xff, 0x00])));
    assertEquals(await reply(), [-1, false, "bad-request"]);
    await conn.write(encodeControl({ v: 1, id: 3, method: "health", args: { n: 3 } }));
    assertEquals(await reply(), [3, true, 3]);
  } finally {
    conn.close();
    server.close();
  }
});
