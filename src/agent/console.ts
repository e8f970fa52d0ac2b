/**
 * A VM's serial console relayed over an RPC stream: guest output goes to the caller as DATA frames,
 * the caller's DATA frames are typed into the guest, until the caller cancels or the VM goes away.
 */
import type { RpcContext } from "../net/quic.ts";
import { connectVm, readLine } from "../vmm/control/client.ts";
import { CONTROL_VERSION } from "../vmm/control/protocol.ts";

/** Relays the console of VM `name` until the caller leaves; resolves with the bytes relayed. */
export async function relayConsole(
  stateDir: string,
  name: string,
  ctx: RpcContext,
): Promise<{ outBytes: number; inBytes: number }> {
  const conn = await connectVm(stateDir, name);
  const counts = { outBytes: 0, inBytes: 0 };
  const close = () => {
    try {
      conn.close();
    } catch {
      // The VMM closed it.
    }
  };
  ctx.signal.addEventListener("abort", close, { once: true });
  try {
    await conn.write(
      new TextEncoder().encode(JSON.stringify({ v: CONTROL_VERSION, op: "console" }) + "\n"),
    );
    await readLine(conn);
    void (async () => {
      for await (const b of ctx.data) {
        counts.inBytes += b.length;
        await conn.write(b);
      }
    })().catch(() => {});
    for await (const chunk of conn.readable) {
      counts.outBytes += chunk.length;
      await ctx.send(chunk);
    }
    return counts;
  } finally {
    ctx.signal.removeEventListener("abort", close);
    close();
  }
}
