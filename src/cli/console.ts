/** `dcres console NAME [--exec CMD]`: attach to a VM's serial console, or run one command in its shell. */
import { RpcClient } from "../net/quic.ts";
import { RpcError } from "../rpc/errors.ts";
import { Inbox } from "../rpc/inbox.ts";
import { closeQuietly } from "../rpc/unix_server.ts";
import { openConsole, request } from "../vmm/control/client.ts";
import { EXIT, type GlobalOptions, report, stateDirOf } from "./context.ts";
import { agentAddr, clientIdentity, remoteCall } from "./remote.ts";
import { ConsoleRelay } from "./terminal.ts";

/** Runs `dcres console`. */
export async function consoleCommand(
  g: GlobalOptions,
  name: string,
  f: { exec?: string; timeoutMs: number },
): Promise<number> {
  if (f.exec) {
    const args = { name, cmd: f.exec, timeoutMs: f.timeoutMs };
    const r = agentAddr(g)
      ? await remoteCall<{ output: string; status: number }>(g, "vm.exec", args)
      : await request<{ output: string; status: number }>(stateDirOf(g), name, {
        op: "exec",
        ...args,
      });
    report(g, r, () => r.output);
    return r.status;
  }
  const relay = new ConsoleRelay();
  try {
    if (agentAddr(g)) await remoteConsole(g, name, relay);
    else await localConsole(g, name, relay);
  } finally {
    relay.close();
  }
  return EXIT.OK;
}

async function localConsole(g: GlobalOptions, name: string, relay: ConsoleRelay) {
  const { conn, output } = await openConsole(stateDirOf(g), name);
  announce(name);
  relay.attach((b) =>
    void conn.write(b).catch(() => {
      // The VMM closed the console: the output pump below ends and so does the session.
    })
  );
  const pump = (async () => {
    for await (const chunk of output) relay.write(chunk);
  })().catch(() => {
    // The connection broke: the console session ends as when the VMM closes it.
  });
  await Promise.race([relay.escaped, pump]);
  closeQuietly(conn);
}

/** The console through an agent: one RPC stream, keystrokes up and guest output down. */
async function remoteConsole(g: GlobalOptions, name: string, relay: ConsoleRelay) {
  const client = await RpcClient.connect(agentAddr(g)!, clientIdentity(g));
  const keys = new Inbox();
  const leave = new AbortController();
  announce(name);
  relay.attach((b) => void keys.push(b));
  void relay.escaped.then(() => {
    keys.end();
    leave.abort();
  });
  try {
    await client.call("vm.console", { name }, {
      deadlineMs: 24 * 3600_000,
      onData: (b) => relay.write(b),
      upload: keys,
      signal: leave.signal,
    });
  } catch (e) {
    if (!(e instanceof RpcError && e.code === "cancelled")) throw e;
  } finally {
    await client.close();
  }
}

function announce(name: string) {
  if (Deno.stderr.isTerminal()) console.error(`connected to ${name}; Ctrl-] leaves`);
}
