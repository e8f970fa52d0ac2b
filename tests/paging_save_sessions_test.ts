/**
 * A sub-host's checkpoint sessions: a request of a checkpoint other than the one under way is
 * refused, a late begin of an aborted checkpoint is refused, and an abort ends only its own
 * checkpoint (the cases the split checkpoint simulation found).
 */
import { assert, assertEquals, assertThrows } from "./helpers/assert.ts";
import { SaveSessionError, SaveSessions } from "../src/paging/save_sessions.ts";

interface S {
  id: string;
  failed?: string;
}

function refusal(fn: () => unknown): SaveSessionError {
  const e = assertThrows(fn, SaveSessionError);
  return e as SaveSessionError;
}

Deno.test("a save request naming a checkpoint that is not under way is refused as stale", () => {
  const s = new SaveSessions<S>();
  assertEquals(refusal(() => s.get("vm", "a")).kind, "stale");
  s.set("vm", { id: "b" });
  const e = refusal(() => s.get("vm", "a"));
  assertEquals(e.kind, "stale");
  assert(e.message.includes("checkpoint a of vm is not the one under way"), e.message);
  assertEquals(s.get("vm", "b").id, "b");
});

Deno.test("a session whose saving failed refuses every request with why", () => {
  const s = new SaveSessions<S>();
  s.set("vm", { id: "a", failed: "disk full" });
  const e = refusal(() => s.get("vm", "a"));
  assertEquals(e.kind, "failed");
  assert(e.message.includes("disk full"), e.message);
});

Deno.test("an abort ends only its own checkpoint, and that checkpoint cannot begin afterwards", () => {
  const s = new SaveSessions<S>();
  s.set("vm", { id: "b" });
  assertEquals(s.abort("vm", "a"), undefined);
  assertEquals(s.current("vm")?.id, "b");
  // Checkpoint a's begin arrives after its abort: it must not replace b.
  assertEquals(refusal(() => s.mayBegin("a")).kind, "stale");
  assertThrows(() => s.set("vm", { id: "a" }), SaveSessionError);
  assertEquals(s.current("vm")?.id, "b");
  assertEquals(s.abort("vm", "b")?.id, "b");
  assertEquals(s.current("vm"), undefined);
});

Deno.test("only the last 64 aborted checkpoints are remembered", () => {
  const s = new SaveSessions<S>();
  for (let i = 0; i < 65; i++) s.abort("vm", `c${i}`);
  s.mayBegin("c0");
  assertThrows(() => s.mayBegin("c1"), SaveSessionError);
});
