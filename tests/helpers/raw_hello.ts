/** A client that says one hello to an agent by hand, as a hostile or outdated peer would. */
import { encodeControl } from "../../src/net/frame.ts";

/**
 * Opens a QUIC connection to `hostname:port` (TLS trusting `caPem`, checking `serverName`), sends
 * `hello` as the first control frame of its first stream, and returns what the agent wrote back
 * before it closed the connection.
 */
export async function helloReply(
  to: { hostname: string; port: number; serverName: string; caPem: string },
  hello: Record<string, unknown>,
): Promise<string> {
  const conn = await Deno.connectQuic({
    hostname: to.hostname,
    port: to.port,
    alpnProtocols: ["dcres/1"],
    caCerts: [to.caPem],
    serverName: to.serverName,
  });
  try {
    const s = await conn.createBidirectionalStream();
    await s.writable.getWriter().write(encodeControl({ v: 1, hello: 1, ...hello }));
    let reply = "";
    try {
      for await (const b of s.readable) reply += new TextDecoder().decode(b);
    } catch {
      // The agent closes the connection after refusing.
    }
    return reply;
  } finally {
    conn.close();
  }
}
