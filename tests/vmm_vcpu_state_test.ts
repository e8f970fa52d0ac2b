/**
 * A vCPU's run state is a typed state machine: the VMM and the Worker move it only along the
 * allowed transitions. A guest's HLT that nothing can wake is a halt, not a shutdown.
 */
import { assertEquals } from "./helpers/assert.ts";
import { CONTROL_BYTES, type RunState, RunStateWord } from "../src/accel/vcpu_control.ts";
import { vcpuExit } from "../src/vmm/vm.ts";

function word(first: RunState): RunStateWord {
  const w = new RunStateWord(new SharedArrayBuffer(CONTROL_BYTES));
  w.init(first);
  return w;
}

Deno.test("a vCPU's run state moves only along the allowed transitions", () => {
  const w = word("paused");
  assertEquals(w.move("pause-requested"), undefined, "only a running vCPU is asked to pause");
  assertEquals(w.get(), "paused");
  assertEquals(w.move("running"), "paused");
  assertEquals(w.move("pause-requested"), "running");
  assertEquals(w.move("paused"), "pause-requested", "the Worker acknowledges the pause");
  assertEquals(w.move("stop-requested"), "paused");
  assertEquals(w.move("running"), undefined, "a vCPU asked to stop is not resumed");
  assertEquals(w.move("paused"), undefined);
  assertEquals(w.move("stopped"), "stop-requested");
  for (const s of ["running", "paused", "pause-requested", "stop-requested"] as const) {
    assertEquals(w.move(s), undefined, `stopped is final (${s})`);
  }
  assertEquals(w.get(), "stopped");
});

Deno.test("a resume that lands before the Worker parks wins: the Worker's late pause is refused", () => {
  const w = word("running");
  w.move("pause-requested");
  assertEquals(w.move("running"), "pause-requested");
  assertEquals(w.move("paused"), undefined);
  assertEquals(w.get(), "running");
});

Deno.test("a vCPU halted for good ends the VM as halted, not as a shutdown", () => {
  const halted = vcpuExit({ t: "halted", index: 1, reason: "the guest halted with no interrupt" });
  assertEquals(halted.reason, "halted");
  assertEquals(halted.detail, "vCPU 1: the guest halted with no interrupt");
  assertEquals(
    vcpuExit({ t: "shutdown", index: 0, reason: "KVM_EXIT_SHUTDOWN" }).reason,
    "shutdown",
  );
  assertEquals(vcpuExit({ t: "error", index: 0, reason: "vector 6" }).reason, "error");
});
