import { assert, assertEquals } from "./helpers/assert.ts";
import { type CallPort, Dispatcher, type RpcContext } from "../src/rpc/dispatcher.ts";
import { fromWireError, RpcError } from "../src/rpc/errors.ts";

const CALLER = { peer: "test", role: "root", via: "local" } as const;

/** A port that records what the handler sent. */
function port(): CallPort & { sent: Uint8Array[]; notes: unknown[] } {
  const sent: Uint8Array[] = [];
  const notes: unknown[] = [];
  return {
    sent,
    notes,
    send: (b) => Promise.resolve(void sent.push(b)),
    progress: (p) => void notes.push(p),
  };
}

Deno.test("the dispatcher gives a handler its caller, progress and DATA both ways, and types every failure", async () => {
  let seen: RpcContext | undefined;
  const d = new Dispatcher({
    echo: async (args, ctx) => {
      seen = ctx;
      ctx.progress({ step: 1 });
      let n = 0;
      for await (const b of ctx.data) {
        n += b.length;
        await ctx.send(b);
      }
      return { n, tag: args.tag };
    },
    refuse: () => Promise.reject(new RpcError("bad-request", "no such VM")),
    boom: () => {
      throw new Error("it broke");
    },
  });
  const p = port();
  const call = d.open({ method: "echo", args: { tag: "x" } }, CALLER, p);
  call.data(new Uint8Array([1, 2]));
  call.data(new Uint8Array([3]));
  call.endOfData();
  assertEquals(await call.outcome, { ok: true, result: { n: 3, tag: "x" } });
  assertEquals(p.notes, [{ step: 1 }]);
  assertEquals(p.sent.map((b) => [...b]), [[1, 2], [3]]);
  assertEquals([seen?.peer, seen?.via], ["test", "local"]);
  assert(seen?.signal.aborted, "the call's signal is aborted once it is over");
  call.data(new Uint8Array(8)); // DATA after the end is dropped, not queued
  const outcome = async (method: string) =>
    (await d.open({ method, args: {} }, CALLER, port()).outcome) as {
      ok: false;
      error: { code: string; message: string };
    };
  assertEquals((await outcome("refuse")).error, { code: "bad-request", message: "no such VM" });
  assertEquals((await outcome("boom")).error, { code: "failed", message: "it broke" });
  for (const m of ["nope", "constructor", "toString"]) {
    assertEquals((await outcome(m)).error.code, "unknown-method");
  }
  const back = fromWireError((await outcome("refuse")).error);
  assert(back instanceof RpcError && back.code === "bad-request", "a wire error comes back typed");
  assertEquals(fromWireError({ code: "from-the-future", message: "m" }).code, "failed");
});

Deno.test("the dispatcher ends a call at its deadline or when cancelled, and aborts the handler's signal with the reason", async () => {
  const reasons: string[] = [];
  const d = new Dispatcher({
    wait: (_a, ctx) =>
      new Promise((_, rej) =>
        ctx.signal.addEventListener("abort", () => {
          reasons.push((ctx.signal.reason as RpcError).code);
          rej(ctx.signal.reason);
        })
      ),
  });
  const late = d.open({ method: "wait", args: {}, deadlineMs: 30 }, CALLER, port());
  assertEquals(
    await late.outcome,
    { ok: false, error: { code: "deadline-exceeded", message: "wait timed out after 30 ms" } },
  );
  const gone = d.open({ method: "wait", args: {} }, CALLER, port());
  gone.cancel(new RpcError("cancelled", "the caller left"));
  assertEquals(await gone.outcome, {
    ok: false,
    error: { code: "cancelled", message: "the caller left" },
  });
  assertEquals(reasons, ["deadline-exceeded", "cancelled"]);
});
