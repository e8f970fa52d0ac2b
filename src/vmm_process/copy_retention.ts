/**
 * Retention of a one-host VM's checkpoint copies (issue 15 item 5): once its host has applied
 * `--keep` to its own store, every other host its manifests name as holding copies removes the same
 * generations (`ckpt.prune`, as this host's agent, which a holder takes only from the store's
 * taker), never anything newer than this host had committed. A holder not reached keeps more than
 * it needs until the next retention or `dcres ckpt gc`.
 */
import type { StoreHolder } from "../ckpt/holders.ts";
import type { RetentionReport } from "../ckpt/retention.ts";
import { loadIdentity } from "../net/identity.ts";
import { RpcClient } from "../net/quic.ts";
import { pruneOn } from "../paging/split_retention.ts";

/**
 * Asks each of `holders` (through `open`'s client to it when there is one, else dialed with the
 * identity in `identityDir`) to prune `store` to what `report` kept, up to generation `upTo`; adds
 * what each removed, or why it did not, to `report`.
 */
export async function pruneCopies(
  report: RetentionReport,
  store: string,
  upTo: number,
  holders: StoreHolder[],
  identityDir: string,
  open: Map<string, RpcClient>,
): Promise<RetentionReport> {
  let identity: ReturnType<typeof loadIdentity> | undefined;
  await pruneOn(
    report,
    store,
    upTo,
    holders.map((h) => ({
      host: h.host,
      call: async <T>(method: string, args: Record<string, unknown>): Promise<T> => {
        const client = open.get(h.host);
        if (client) return await client.call<T>(method, args);
        if (!h.addr) throw new Error("no manifest records its agent's address");
        identity ??= loadIdentity(identityDir);
        const own = await RpcClient.connect(h.addr, identity);
        try {
          return await own.call<T>(method, args);
        } finally {
          await own.close();
        }
      },
    })),
  );
  return report;
}
