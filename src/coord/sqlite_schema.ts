/**
 * The SQLite state file's schema and its version rule. `PRAGMA user_version` is the version;
 * `MIGRATIONS[i]` takes a file from version i to i+1 and is never edited once released, only
 * appended to. Opening a file runs the steps it lacks in one transaction; a file of a newer version
 * than this dcres knows is refused, never rewritten. A change to a record's fields is a new version
 * too (records are checked strictly), so an older dcres refuses what it cannot read whole.
 */
import { DatabaseSync } from "node:sqlite";
import { StateCorruptError, StateStoreError } from "./state.ts";

const MIGRATIONS: readonly string[] = [
  `CREATE TABLE meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
   INSERT INTO meta VALUES ('revision', 0), ('term', 0);
   CREATE TABLE records (
     kind TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL, rev INTEGER NOT NULL,
     PRIMARY KEY (kind, key)) WITHOUT ROWID;
   CREATE TABLE events (
     seq INTEGER PRIMARY KEY AUTOINCREMENT, time_ms INTEGER NOT NULL, value TEXT NOT NULL);
   CREATE INDEX events_time ON events (time_ms);
   CREATE TABLE leader (
     one INTEGER PRIMARY KEY CHECK (one = 1), holder TEXT NOT NULL, term INTEGER NOT NULL,
     expires_ms INTEGER NOT NULL);`,
  // 2: a lease records its host's state, taken here from the newest host-state event.
  `UPDATE records SET value = json_set(value, '$.state', (
     SELECT substr(json_extract(e.value, '$.kind'), 6) FROM events e
     WHERE json_extract(e.value, '$.host') = json_extract(records.value, '$.host')
       AND json_extract(e.value, '$.kind') IN ('host-up', 'host-suspect', 'host-down')
     ORDER BY e.seq DESC LIMIT 1))
   WHERE kind = 'lease' AND EXISTS (
     SELECT 1 FROM events e
     WHERE json_extract(e.value, '$.host') = json_extract(records.value, '$.host')
       AND json_extract(e.value, '$.kind') IN ('host-up', 'host-suspect', 'host-down'));`,
];

/** The schema version this dcres writes. */
export const SQLITE_SCHEMA_VERSION = MIGRATIONS.length;

/**
 * Opens (creating) the state file at `path` in WAL mode, brought to {@link SQLITE_SCHEMA_VERSION}.
 * Throws {@link StateStoreError} when it cannot be opened, {@link StateCorruptError} when it is
 * not a dcres state file or is newer than this dcres.
 */
export function openStateFile(path: string, where: string): DatabaseSync {
  try {
    // Created owner-only before SQLite creates it with the umask's mode.
    Deno.openSync(path, { read: true, write: true, create: true, mode: 0o600 }).close();
  } catch (e) {
    throw new StateStoreError(where, `cannot open the state file: ${(e as Error).message}`);
  }
  let db: DatabaseSync;
  try {
    db = new DatabaseSync(path);
  } catch (e) {
    throw new StateStoreError(where, `cannot open the state file: ${(e as Error).message}`);
  }
  try {
    db.exec("PRAGMA busy_timeout = 5000");
    db.exec("PRAGMA journal_mode = WAL");
    // The coordinator's decisions (leases, fencing epochs) must survive a power cut.
    db.exec("PRAGMA synchronous = FULL");
    migrate(db, where);
    return db;
  } catch (e) {
    db.close();
    if (e instanceof StateCorruptError) throw e;
    throw new StateCorruptError(
      where,
      `is not a usable dcres state file (${(e as Error).message}); move it away to start afresh`,
    );
  }
}

function version(db: DatabaseSync): number {
  return Number((db.prepare("PRAGMA user_version").get() as { user_version: number }).user_version);
}

function migrate(db: DatabaseSync, where: string): void {
  if (version(db) === SQLITE_SCHEMA_VERSION) return;
  db.exec("BEGIN IMMEDIATE");
  try {
    const from = version(db);
    if (from > SQLITE_SCHEMA_VERSION) {
      throw new StateCorruptError(
        where,
        `has schema version ${from}, newer than ${SQLITE_SCHEMA_VERSION} that this dcres knows; run a newer dcres`,
      );
    }
    for (let v = from; v < SQLITE_SCHEMA_VERSION; v++) db.exec(MIGRATIONS[v]);
    db.exec(`PRAGMA user_version = ${SQLITE_SCHEMA_VERSION}`);
    db.exec("COMMIT");
  } catch (e) {
    db.exec("ROLLBACK");
    throw e;
  }
}
