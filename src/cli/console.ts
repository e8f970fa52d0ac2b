/** `dcres console NAME [--exec CMD]`: attach to a VM's serial console, or run one command in its shell. */
import { connectVm, readLine, request } from "../vmm/control/client.ts";
import { CONTROL_VERSION } from "../vmm/control/protocol.ts";
import { EXIT, type GlobalOptions, report, stateDirOf } from "./context.ts";
import { ConsoleRelay } from "./terminal.ts";

/** Runs `dcres console`. */
export async function consoleCommand(
  g: GlobalOptions,
  name: string,
  f: { exec?: string; timeoutMs: number },
): Promise<number> {
  const dir = stateDirOf(g);
  if (f.exec) {
    const r = await request<{ output: string; status: number }>(dir, name, {
      op: "exec",
      cmd: f.exec,
      timeoutMs: f.timeoutMs,
    });
    report(g, r, () => r.output);
    return r.status;
  }
  const conn = await connectVm(dir, name);
  await conn.write(
    new TextEncoder().encode(JSON.stringify({ v: CONTROL_VERSION, op: "console" }) + "\n"),
  );
  await readLine(conn);
  if (Deno.stderr.isTerminal()) console.error(`connected to ${name}; Ctrl-] leaves`);
  const relay = new ConsoleRelay();
  relay.attach((b) => void conn.write(b).catch(() => {}));
  const pump = (async () => {
    for await (const chunk of conn.readable) relay.write(chunk);
  })().catch(() => {});
  await Promise.race([relay.escaped, pump]);
  relay.close();
  try {
    conn.close();
  } catch {
    // The VMM closed it.
  }
  return EXIT.OK;
}
