/**
 * Retention of a one-host VM's checkpoint copies (issue 15 item 5): once its host has applied
 * `--keep` to its own store, every other host its manifests name as holding copies removes the same
 * generations (`ckpt.prune`, as this host's agent, which a holder takes only from the store's
 * taker), never anything newer than this host had committed. A holder not reached keeps more than
 * it needs until the next retention or `dcres ckpt gc`.
 */
import { getLogger } from "@logtape/logtape";
import type { StoreHolder } from "../ckpt/holders.ts";
import type { RetentionReport } from "../ckpt/retention.ts";
import { loadIdentity } from "../net/identity.ts";
import { RpcClient } from "../net/quic.ts";
import { prunedOf } from "../paging/split_retention.ts";

const log = getLogger(["dcres", "checkpoint"]);

/**
 * Asks each of `holders` (reached through `open` when given a client there, else dialed with the
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
  const args = { store, keep: report.kept, upTo };
  let identity: ReturnType<typeof loadIdentity> | undefined;
  await Promise.all(holders.map(async (h) => {
    try {
      let client = open.get(h.host);
      const own = !client;
      if (!client) {
        if (!h.addr) throw new Error("no manifest records its agent's address");
        identity ??= loadIdentity(identityDir);
        client = await RpcClient.connect(h.addr, identity);
      }
      try {
        report.removed[h.host] = prunedOf(
          h.host,
          await client.call<{ removed?: unknown }>("ckpt.prune", args),
        );
      } finally {
        if (own) await client.close();
      }
    } catch (e) {
      report.failed[h.host] = (e as Error).message;
      log.warn("{host} did not remove old generations of {store}: {error}", {
        host: h.host,
        store,
        error: (e as Error).message,
      });
    }
  }));
  return report;
}
