/**
 * main.ts's command line: --log-level is a commander option with its choices, and the processes
 * that log at info are the top-level `vmm` and `agent` commands, not any command line holding the
 * word "agent" (a VM may be named so).
 */
import { assertEquals, assertRejects } from "./helpers/assert.ts";
import { CommanderError } from "commander";
import { type LogLevel, program } from "../main.ts";

/** Parses `argv` up to the moment its command would run; returns the level logging starts at. */
async function levelFor(argv: string[]): Promise<LogLevel> {
  let seen: LogLevel | undefined;
  const stop = new Error("stopped before the command ran");
  const p = program(() => {}, (level) => {
    seen = level;
    return Promise.reject(stop);
  });
  await assertRejects(() => p.parseAsync(argv, { from: "user" }), Error, stop.message);
  return seen!;
}

Deno.test("--log-level is parsed by commander, as two words or one, default warning", async () => {
  assertEquals(await levelFor(["vm", "ls"]), "warning");
  assertEquals(await levelFor(["--log-level", "debug", "vm", "ls"]), "debug");
  assertEquals(await levelFor(["--log-level=error", "ckpt", "ls", "/tmp"]), "error");
});

Deno.test("a VM named agent or vmm does not make a command log like the agent", async () => {
  assertEquals(await levelFor(["vm", "stop", "agent"]), "warning");
  assertEquals(await levelFor(["--log-level", "error", "vm", "pause", "vmm"]), "error");
  assertEquals(await levelFor(["console", "agent"]), "warning");
  assertEquals(await levelFor(["agent", "--listen", "127.0.0.1:7400"]), "info");
  assertEquals(await levelFor(["--log-level", "error", "vmm", "--spec", "{}"]), "info");
});

Deno.test("a --log-level that is not a level is a usage error, before anything runs", async () => {
  const p = program(() => {}, () => Promise.reject(new Error("ran")));
  p.configureOutput({ writeErr: () => {} });
  const e = await assertRejects(
    () => p.parseAsync(["--log-level", "loud", "vm", "ls"], { from: "user" }),
    CommanderError,
  );
  assertEquals((e as CommanderError).code, "commander.invalidArgument");
});
