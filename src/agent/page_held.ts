/**
 * `pages.held` with the bitmap as DATA frames. A VM of 32 GiB or more has a bitmap of 1 MiB or
 * more, over the limit of one control frame, so `vm check` of it failed; a caller that asks for
 * DATA (`data: true`) gets the bitmap in pieces and a small reply. Callers that do not ask (an older
 * main host) still get it in the reply.
 */
import { piecesOf } from "../net/chunks.ts";
import type { RpcHandler } from "../rpc/dispatcher.ts";

/** `handlers` with their `pages.held` sending the bitmap as DATA frames when asked to. */
export function heldAsData(handlers: Record<string, RpcHandler>): Record<string, RpcHandler> {
  const held = handlers["pages.held"];
  if (!held) return handlers;
  return {
    ...handlers,
    "pages.held": async (args, ctx) => {
      const r = await held(args, ctx) as { heldPages: number; bitmap: Uint8Array };
      if (args.data !== true) return r;
      for await (const piece of piecesOf(r.bitmap)) await ctx.send(piece);
      return { heldPages: r.heldPages, bytes: r.bitmap.length };
    },
  };
}
