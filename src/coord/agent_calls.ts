/**
 * How the coordinator's orchestration (split restore, merge, copies between agents) reaches agents:
 * one interface, so the coordinator (its own identity) and the CLI (the person's) run the same code.
 */
import type { RpcClient } from "../net/quic.ts";
import type { CallOptions } from "../net/stream_call.ts";

/** Calls methods on agents by address. */
export interface AgentCalls {
  /** Calls `method` on the agent at `addr`. */
  call<T>(
    addr: string,
    method: string,
    args: Record<string, unknown>,
    opts?: CallOptions,
  ): Promise<T>;
}

/** Calls over a connection `dial` opens for each call and closes after it. */
export function dialCalls(dial: (addr: string) => Promise<RpcClient>): AgentCalls {
  return {
    async call<T>(addr: string, method: string, args: Record<string, unknown>, opts?: CallOptions) {
      const client = await dial(addr);
      try {
        return await client.call<T>(method, args, opts);
      } finally {
        await client.close();
      }
    },
  };
}
