/** The two coordinator stores as test fixtures: a fresh store, more openings of it, raw writes. */
import { DatabaseSync } from "node:sqlite";
import { EtcdState } from "../../src/coord/etcd_state.ts";
import { SqliteState } from "../../src/coord/sqlite_state.ts";
import type { CoordState, RecordKind } from "../../src/coord/state.ts";
import { etcdBinary, TestEtcd } from "./etcd.ts";

/** One fresh store of a backend. */
export interface StoreFixture {
  /** The `--store` value that opens it. */
  store: string;
  /** Opens it (again). */
  open(): Promise<CoordState>;
  /** Writes `value` as the record `kind`/`key`, past every check. */
  putRaw(kind: RecordKind, key: string, value: Uint8Array): Promise<void>;
  /** Marks the store as written by a dcres of schema `version`. */
  setSchema(version: number): Promise<void>;
  /** The schema version the store is marked with. */
  schema(): Promise<number>;
  /** Removes it (and stops what serves it). */
  remove(): Promise<void>;
  /** The etcd serving it, for outage tests. */
  etcd?: TestEtcd;
}

/** A backend the contract runs against. */
export interface Backend {
  /** Its name in test names. */
  name: string;
  /** Why its tests are skipped here, if they are. */
  skip?: string;
  /** A fresh store. */
  fresh(): Promise<StoreFixture>;
}

const sqlite: Backend = {
  name: "SqliteState",
  fresh() {
    const dir = Deno.makeTempDirSync({ prefix: "dcres-coord-" });
    const path = `${dir}/coord.db`;
    const raw = (sql: string, ...args: (string | number | Uint8Array)[]) => {
      const db = new DatabaseSync(path);
      db.prepare(sql).run(...args);
      db.close();
      return Promise.resolve();
    };
    return Promise.resolve({
      store: path,
      open: () => Promise.resolve(new SqliteState(path)),
      putRaw: (kind, key, value) =>
        raw(
          "INSERT OR REPLACE INTO records VALUES (?, ?, ?, 1)",
          kind,
          key,
          new TextDecoder().decode(value),
        ),
      setSchema: (version) => raw(`PRAGMA user_version = ${version}`),
      schema: () => {
        const db = new DatabaseSync(path);
        const { user_version } = db.prepare("PRAGMA user_version").get() as {
          user_version: number;
        };
        db.close();
        return Promise.resolve(Number(user_version));
      },
      remove: () => Promise.resolve(Deno.removeSync(dir, { recursive: true })),
    });
  },
};

const etcd: Backend = {
  name: "EtcdState",
  skip: etcdBinary() ? undefined : "etcd is not installed (apt-get install etcd-server)",
  async fresh() {
    const server = await TestEtcd.start();
    return {
      store: server.url,
      open: () => EtcdState.open(server.url),
      putRaw: (kind, key, value) => server.putRaw(`/dcres/coord/r/${kind}/${key}`, value),
      setSchema: (version) =>
        server.putRaw("/dcres/coord/schema", new TextEncoder().encode(JSON.stringify({ version }))),
      schema: async () =>
        JSON.parse(new TextDecoder().decode(await server.getRaw("/dcres/coord/schema"))).version,
      remove: () => server.stop(),
      etcd: server,
    };
  },
};

/** Both backends. */
export const BACKENDS: Backend[] = [sqlite, etcd];
