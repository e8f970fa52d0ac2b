/**
 * The coordinator's state in an embedded SQLite file (`node:sqlite`, WAL): the default store of a
 * single coordinator, which a restarted coordinator continues from. Every commit is one IMMEDIATE
 * transaction that checks each step's expected revision and, as leader, the leader row, before it
 * writes; so the file is also safe for several processes on one host, and its election (a leader
 * row with a wall-clock expiry) works among them.
 */
import type { DatabaseSync } from "node:sqlite";
import { Election } from "./election.ts";
import {
  checkListVm,
  checkOps,
  checkTime,
  decodeEvent,
  decodeRecord,
  eventQuery,
  isKey,
  MAX_LIST,
} from "./records.ts";
import { openStateFile } from "./sqlite_schema.ts";
import {
  type CoordEvent,
  type CoordState,
  type EventQuery,
  type LeaderInfo,
  type Leadership,
  NotLeaderError,
  type RecordKind,
  type RecordOf,
  StaleRevisionError,
  StateCorruptError,
  type StateOp,
  StateStoreError,
  type Versioned,
} from "./state.ts";

interface Row {
  key: string;
  value: string;
  rev: number;
}

/** {@link CoordState} in a SQLite file. */
export class SqliteState implements CoordState {
  /** `sqlite:PATH`. */
  readonly where: string;
  #db: DatabaseSync | undefined;
  #election: Election;

  /** Opens (creating) the state file at `path`; see `openStateFile` for what it refuses. */
  constructor(path: string) {
    this.where = `sqlite:${path}`;
    this.#db = openStateFile(path, this.where);
    this.#election = new Election({
      tryLead: (id, ttlMs) => this.#run(() => this.#tryLead(id, ttlMs)),
      renew: (lead, ttlMs) => this.#run(() => this.#renew(lead, ttlMs)),
      release: (lead) => this.#run(() => this.#release(lead)),
    }, this.where);
  }

  get #open(): DatabaseSync {
    if (!this.#db) throw new StateStoreError(this.where, "the state is closed");
    return this.#db;
  }

  /** See {@link CoordState.get}. */
  get<K extends RecordKind>(kind: K, key: string): Promise<Versioned<RecordOf[K]> | undefined> {
    return this.#run(() => {
      const row = this.#open.prepare(
        "SELECT key, value, rev FROM records WHERE kind = ? AND key = ?",
      ).get(kind, key) as Row | undefined;
      return row && this.#decode(kind, row);
    });
  }

  /** See {@link CoordState.list}. */
  list<K extends RecordKind>(kind: K, vm?: string): Promise<Versioned<RecordOf[K]>[]> {
    return this.#run(() => {
      checkListVm(kind, vm);
      const rows = (vm === undefined
        ? this.#open.prepare(
          "SELECT key, value, rev FROM records WHERE kind = ? ORDER BY key LIMIT ?",
        ).all(kind, MAX_LIST + 1)
        : this.#open.prepare(
          "SELECT key, value, rev FROM records WHERE kind = ? AND substr(key, 1, ?) = ? ORDER BY key LIMIT ?",
        ).all(kind, vm.length + 1, `${vm}/`, MAX_LIST + 1)) as unknown as Row[];
      if (rows.length > MAX_LIST) {
        throw new StateCorruptError(this.where, `more than ${MAX_LIST} ${kind} records`);
      }
      return rows.map((r) => this.#decode(kind, r));
    });
  }

  #decode<K extends RecordKind>(kind: K, row: Row): Versioned<RecordOf[K]> {
    if (!isKey(kind, row.key)) {
      throw new StateCorruptError(this.where, `a ${kind} is stored under the bad key ${row.key}`);
    }
    return { value: decodeRecord(kind, row.key, row.value, this.where), rev: Number(row.rev) };
  }

  /** See {@link CoordState.commit}. */
  commit(ops: StateOp[], opts: { asLeader?: boolean } = {}): Promise<number> {
    return this.#run(() => this.#commit(ops, opts.asLeader === true));
  }

  #commit(ops: StateOp[], asLeader: boolean): number {
    const steps = checkOps(ops);
    return this.#transaction(() => {
      if (asLeader) this.#checkLeader();
      const db = this.#open;
      const revOf = db.prepare("SELECT rev FROM records WHERE kind = ? AND key = ?");
      for (const s of steps) {
        if (s.op === "event" || s.expect === undefined) continue;
        const actual = Number((revOf.get(s.kind, s.key) as { rev?: number } | undefined)?.rev ?? 0);
        if (actual !== s.expect) throw new StaleRevisionError(s.kind, s.key, s.expect, actual);
      }
      const rev = this.#meta("revision") + 1;
      db.prepare("UPDATE meta SET value = ? WHERE name = 'revision'").run(rev);
      const put = db.prepare("INSERT OR REPLACE INTO records VALUES (?, ?, ?, ?)");
      const del = db.prepare("DELETE FROM records WHERE kind = ? AND key = ?");
      const event = db.prepare("INSERT INTO events (time_ms, value) VALUES (?, ?)");
      for (const s of steps) {
        if (s.op === "put") put.run(s.kind, s.key, s.json, rev);
        else if (s.op === "delete") del.run(s.kind, s.key);
        else event.run(s.timeMs, s.json);
      }
      return rev;
    });
  }

  /** See {@link CoordState.events}. */
  events(query: EventQuery = {}): Promise<CoordEvent[]> {
    return this.#run(() => {
      const { after, limit } = eventQuery(query);
      const rows = this.#open.prepare(
        "SELECT seq, value FROM events WHERE seq > ? ORDER BY seq DESC LIMIT ?",
      ).all(after, limit) as unknown as { seq: number; value: string }[];
      return rows.reverse().map((r) => ({
        ...decodeEvent(r.value, this.where, Number(r.seq)),
        seq: Number(r.seq),
      }));
    });
  }

  /** See {@link CoordState.pruneEvents}. */
  pruneEvents(beforeMs: number): Promise<number> {
    return this.#run(() =>
      Number(
        this.#open.prepare("DELETE FROM events WHERE time_ms < ?").run(checkTime(beforeMs)).changes,
      )
    );
  }

  /** See {@link CoordState.revision}. */
  revision(): Promise<number> {
    return this.#run(() => this.#meta("revision"));
  }

  /** See {@link CoordState.campaign}. */
  campaign(id: string, ttlMs: number, signal?: AbortSignal): Promise<Leadership> {
    return this.#run(() => this.#open).then(() => this.#election.campaign(id, ttlMs, signal));
  }

  /** See {@link CoordState.resign}. */
  resign(): Promise<void> {
    return this.#election.resign();
  }

  /** See {@link CoordState.isLeader}. */
  isLeader(): boolean {
    return this.#election.isLeader();
  }

  /** See {@link CoordState.leader}. */
  leader(): Promise<LeaderInfo | undefined> {
    return this.#run(() => {
      const row = this.#leaderRow();
      return row && row.expires_ms > Date.now() ? { id: row.holder, term: row.term } : undefined;
    });
  }

  /** See {@link CoordState.close}. */
  async close(): Promise<void> {
    if (!this.#db) return;
    await this.#election.close();
    this.#db.close();
    this.#db = undefined;
  }

  #meta(name: string): number {
    const row = this.#open.prepare("SELECT value FROM meta WHERE name = ?").get(name) as
      | { value: number }
      | undefined;
    if (!row) {
      throw new StateCorruptError(this.where, `the state file has no ${name}; it is damaged`);
    }
    return Number(row.value);
  }

  #leaderRow(): { holder: string; term: number; expires_ms: number } | undefined {
    const row = this.#open.prepare("SELECT holder, term, expires_ms FROM leader").get() as
      | { holder: string; term: number; expires_ms: number }
      | undefined;
    return row &&
      { holder: row.holder, term: Number(row.term), expires_ms: Number(row.expires_ms) };
  }

  #checkLeader(): void {
    const held = this.#election.held();
    if (!held) throw new NotLeaderError(this.where, "it has not been elected");
    const row = this.#leaderRow();
    if (!row || row.holder !== held.id || row.term !== held.term || row.expires_ms <= Date.now()) {
      throw new NotLeaderError(this.where, `its term ${held.term} has ended`);
    }
  }

  #tryLead(id: string, ttlMs: number): number | undefined {
    return this.#transaction(() => {
      const row = this.#leaderRow();
      if (row && row.expires_ms > Date.now()) return undefined;
      const term = this.#meta("term") + 1;
      this.#open.prepare("UPDATE meta SET value = ? WHERE name = 'term'").run(term);
      this.#open.prepare("INSERT OR REPLACE INTO leader VALUES (1, ?, ?, ?)")
        .run(id, term, Date.now() + ttlMs);
      return term;
    });
  }

  #renew(lead: LeaderInfo, ttlMs: number): boolean {
    if (!this.#db) return false;
    const now = Date.now();
    const r = this.#db.prepare(
      "UPDATE leader SET expires_ms = ? WHERE holder = ? AND term = ? AND expires_ms > ?",
    ).run(now + ttlMs, lead.id, lead.term, now);
    return Number(r.changes) === 1;
  }

  #release(lead: LeaderInfo): void {
    this.#db?.prepare("DELETE FROM leader WHERE holder = ? AND term = ?").run(lead.id, lead.term);
  }

  /** `fn` as a promise; SQLite's own failures (busy, I/O, a full disk) as {@link StateStoreError}. */
  #run<T>(fn: () => T): Promise<T> {
    return Promise.try(fn).catch((e) => {
      if ((e as { code?: unknown }).code !== "ERR_SQLITE_ERROR") throw e;
      throw new StateStoreError(this.where, `SQLite: ${(e as Error).message}`);
    });
  }

  #transaction<T>(fn: () => T): T {
    const db = this.#open;
    db.exec("BEGIN IMMEDIATE");
    try {
      const r = fn();
      db.exec("COMMIT");
      return r;
    } catch (e) {
      db.exec("ROLLBACK");
      throw e;
    }
  }
}
