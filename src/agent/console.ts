/**
 * A VM's serial console relayed over an RPC stream: guest output goes to the caller as DATA frames,
 * the caller's DATA frames are typed into the guest, until the caller cancels or the VM goes away.
 */
import type { RpcContext } from "../rpc/dispatcher.ts";
import { closeQuietly } from "../rpc/unix_server.ts";
import { openConsole } from "../vmm/control/client.ts";

/** Relays the console of VM `name` until the caller leaves; resolves with the bytes relayed. */
export async function relayConsole(
  stateDir: string,
  name: string,
  ctx: RpcContext,
): Promise<{ outBytes: number; inBytes: number }> {
  const { conn, output } = await openConsole(stateDir, name);
  const counts = { outBytes: 0, inBytes: 0 };
  const close = () => closeQuietly(conn);
  ctx.signal.addEventListener("abort", close, { once: true });
  try {
    void (async () => {
      for await (const b of ctx.data) {
        counts.inBytes += b.length;
        await conn.write(b);
      }
    })().catch(() => {
      // The VM went away or the caller cancelled: the output loop below ends too.
    });
    for await (const chunk of output) {
      counts.outBytes += chunk.length;
      await ctx.send(chunk);
    }
    return counts;
  } finally {
    ctx.signal.removeEventListener("abort", close);
    close();
  }
}
