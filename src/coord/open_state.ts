/**
 * The coordinator's store from its `--store` flag: `etcd://HOST:PORT,...` for etcd, anything else
 * a SQLite state file's path (the default is `coord.db` in the data directory).
 */
import { EtcdState } from "./etcd_state.ts";
import { SqliteState } from "./sqlite_state.ts";
import type { CoordState } from "./state.ts";

/** Opens the store `store` names; throws the store's one-line error when it cannot. */
export async function openState(store: string): Promise<CoordState> {
  if (store.startsWith("etcd://")) return await EtcdState.open(store);
  return new SqliteState(store);
}
