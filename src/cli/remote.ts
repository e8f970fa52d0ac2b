/** Reaching an agent from the CLI: `--agent HOST:PORT` (or DCRES_AGENT) and the client identity. */
import { join } from "node:path";
import { RpcClient } from "../net/quic.ts";
import { type Identity, loadIdentity } from "../net/identity.ts";
import { type AgentCalls, dialCalls } from "../coord/agent_calls.ts";
import type { GlobalOptions } from "./context.ts";

/** Where the client identity is by default ($XDG_CONFIG_HOME/dcres/client or ~/.config/...). */
export function defaultClientIdentityDir(): string {
  const base = Deno.env.get("XDG_CONFIG_HOME") ?? join(Deno.env.get("HOME") ?? "/root", ".config");
  return join(base, "dcres", "client");
}

/** The agent address the CLI should talk to, if any. */
export function agentAddr(g: GlobalOptions): string | undefined {
  return g.agent ?? Deno.env.get("DCRES_AGENT");
}

/** The client identity: --cert/--key/--ca (or DCRES_CERT/KEY/CA), else the default directory. */
export function clientIdentity(g: GlobalOptions): Identity {
  const cert = g.cert ?? Deno.env.get("DCRES_CERT");
  const key = g.key ?? Deno.env.get("DCRES_KEY");
  const ca = g.ca ?? Deno.env.get("DCRES_CA");
  if (cert || key || ca) {
    if (!cert || !key || !ca) {
      throw new Error(
        "--cert, --key and --ca go together; give all three (or none, for the default identity)",
      );
    }
    const read = (flag: string, p: string) => {
      try {
        return Deno.readTextFileSync(p);
      } catch {
        throw new Error(`${flag} ${p}: cannot read it`);
      }
    };
    return { certPem: read("--cert", cert), keyPem: read("--key", key), caPem: read("--ca", ca) };
  }
  return loadIdentity(defaultClientIdentityDir());
}

/** Calls one method on the agent named by --agent, giving it `deadlineMs` (default 10 min). */
export async function remoteCall<T>(
  g: GlobalOptions,
  method: string,
  args: Record<string, unknown> = {},
  onProgress?: (p: unknown) => void,
  deadlineMs?: number,
): Promise<T> {
  const addr = agentAddr(g)!;
  const client = await RpcClient.connect(addr, clientIdentity(g));
  try {
    return await client.call<T>(method, args, { onProgress, deadlineMs });
  } finally {
    await client.close();
  }
}

/** Calls on any agent as this CLI's identity: how the coordinator's orchestration runs in-process. */
export function agentCalls(g: GlobalOptions): AgentCalls {
  const identity = clientIdentity(g);
  return dialCalls((addr) => RpcClient.connect(addr, identity));
}
