/**
 * The coordinator's state in etcd (`--store etcd://HOST:PORT,...`), shared by several coordinators
 * of which one leads. Records live under `/dcres/coord/r/KIND/KEY`, events under
 * `/dcres/coord/e/TIME-UUID` ordered by the revision that created them, the schema version at
 * `/dcres/coord/schema`. A commit is one etcd txn comparing each record's mod revision; the leader
 * holds `/dcres/coord/leader`, created only if absent and bound to its lease (etcd's own election
 * recipe), and its commits compare that key's create revision, which is also its term.
 */
import * as v from "valibot";
import { Election } from "./election.ts";
import {
  b64,
  EtcdClient,
  type EtcdCompare,
  type EtcdKv,
  type EtcdRequest,
  parseEtcdUrl,
  prefixEnd,
} from "./etcd_client.ts";
import * as records from "./records.ts";
import type * as S from "./state.ts";
import { NotLeaderError, StaleRevisionError, StateCorruptError } from "./state.ts";

const ROOT = "/dcres/coord/";
const SCHEMA_KEY = `${ROOT}schema`;
const LEADER_KEY = `${ROOT}leader`;
const EVENTS = `${ROOT}e/`;
/** The etcd layout's version: the key names above and the records' fields (records.ts). */
export const ETCD_SCHEMA_VERSION = 2;

/** Events are keyed by time first, so old ones go in one range; `seq` is their create revision. */
const eventKey = (timeMs: number) => `${EVENTS}${String(timeMs).padStart(16, "0")}-`;
const recordPrefix = (kind: S.RecordKind) => `${ROOT}r/${kind}/`;
const LEADER = v.strictObject({ id: v.pipe(v.string(), v.maxLength(128)) });
const SCHEMA = v.looseObject({ version: v.pipe(v.number(), v.safeInteger(), v.minValue(1)) });

/** {@link CoordState} in etcd. */
export class EtcdState implements S.CoordState {
  /** `etcd://HOSTS`. */
  readonly where: string;
  #etcd: EtcdClient;
  #election: Election;
  #lease: { term: number; id: string } | undefined;

  private constructor(etcd: EtcdClient) {
    this.#etcd = etcd;
    this.where = etcd.where;
    this.#election = new Election({
      tryLead: (id, ttlMs) => this.#tryLead(id, ttlMs),
      renew: (lead) => this.#renew(lead),
      release: (lead) => this.#release(lead),
    }, this.where);
  }

  /**
   * Connects to `url` (`etcd://HOST:PORT,...`) and checks, or on an empty etcd writes, the schema
   * version; refuses a store written by a newer dcres.
   */
  static async open(url: string): Promise<EtcdState> {
    const s = new EtcdState(new EtcdClient(parseEtcdUrl(url)));
    await s.#checkSchema();
    return s;
  }

  async #checkSchema(): Promise<void> {
    const mine = JSON.stringify({ version: ETCD_SCHEMA_VERSION });
    const r = await this.#etcd.txn(
      [{ key: b64(SCHEMA_KEY), target: "CREATE", result: "EQUAL", create_revision: "0" }],
      [{ request_put: { key: b64(SCHEMA_KEY), value: b64(mine) } }],
      [{ request_range: { key: b64(SCHEMA_KEY) } }],
    );
    if (r.succeeded) return;
    const kv = r.read[0];
    const found = kv && v.safeParse(SCHEMA, parseJson(kv.value));
    if (!found?.success) {
      throw new StateCorruptError(this.where, `${SCHEMA_KEY} is damaged; it should be ${mine}`);
    }
    if (found.output.version > ETCD_SCHEMA_VERSION) {
      throw new StateCorruptError(
        this.where,
        `holds schema version ${found.output.version}, newer than ${ETCD_SCHEMA_VERSION} that this dcres knows; run a newer dcres`,
      );
    }
    if (found.output.version < ETCD_SCHEMA_VERSION) {
      // 1 → 2 only lets leases carry their host's state, so raising the mark converts it all: an
      // older dcres then refuses the store by its version instead of a record it cannot read.
      await this.#etcd.txn(
        [{ key: b64(SCHEMA_KEY), target: "MOD", result: "EQUAL", mod_revision: String(kv.modRev) }],
        [{ request_put: { key: b64(SCHEMA_KEY), value: b64(mine) } }],
        [],
      );
    }
  }

  /** See {@link CoordState.get}. */
  async get<K extends S.RecordKind>(
    kind: K,
    key: string,
  ): Promise<S.Versioned<S.RecordOf[K]> | undefined> {
    if (!records.isKey(kind, key)) return undefined;
    const [kv] = await this.#etcd.range(recordPrefix(kind) + key);
    return kv && this.#decode(kind, kv);
  }

  /** See {@link CoordState.list}. */
  async list<K extends S.RecordKind>(kind: K, vm?: string): Promise<S.Versioned<S.RecordOf[K]>[]> {
    records.checkListVm(kind, vm);
    const prefix = recordPrefix(kind) + (vm === undefined ? "" : `${vm}/`);
    const kvs = await this.#etcd.range(prefix, { end: prefixEnd(prefix) });
    return kvs.map((kv) => this.#decode(kind, kv));
  }

  #decode<K extends S.RecordKind>(kind: K, kv: EtcdKv): S.Versioned<S.RecordOf[K]> {
    const key = kv.key.slice(recordPrefix(kind).length);
    if (!kv.key.startsWith(recordPrefix(kind)) || !records.isKey(kind, key)) {
      throw new StateCorruptError(this.where, `a ${kind} is stored under the bad key ${kv.key}`);
    }
    return { value: records.decodeRecord(kind, key, kv.value, this.where), rev: kv.modRev };
  }

  /** See {@link CoordState.commit}. */
  async commit(ops: S.StateOp[], opts: { asLeader?: boolean } = {}): Promise<number> {
    const steps = records.checkOps(ops);
    const compare: EtcdCompare[] = [];
    const success: EtcdRequest[] = [];
    const failure: EtcdRequest[] = [];
    const held = this.#election.held();
    if (opts.asLeader) {
      if (!held) throw new NotLeaderError(this.where, "it has not been elected");
      const key = b64(LEADER_KEY);
      compare.push({ key, target: "CREATE", result: "EQUAL", create_revision: String(held.term) });
      failure.push({ request_range: { key } });
    }
    for (const s of steps) {
      if (s.op === "event") {
        const key = b64(eventKey(s.timeMs) + crypto.randomUUID());
        success.push({ request_put: { key, value: b64(s.json) } });
        continue;
      }
      const key = b64(recordPrefix(s.kind) + s.key);
      if (s.expect !== undefined) {
        compare.push(
          s.expect === 0
            ? { key, target: "CREATE", result: "EQUAL", create_revision: "0" }
            : { key, target: "MOD", result: "EQUAL", mod_revision: String(s.expect) },
        );
        failure.push({ request_range: { key } });
      }
      success.push(
        s.op === "put"
          ? { request_put: { key, value: b64(s.json) } }
          : { request_delete_range: { key } },
      );
    }
    const r = await this.#etcd.txn(compare, success, failure);
    if (r.succeeded) return r.revision;
    const found = new Map(r.read.map((kv) => [kv.key, kv]));
    for (const s of steps) {
      if (s.op === "event" || s.expect === undefined) continue;
      const actual = found.get(recordPrefix(s.kind) + s.key)?.modRev ?? 0;
      if (actual !== s.expect) throw new StaleRevisionError(s.kind, s.key, s.expect, actual);
    }
    throw new NotLeaderError(this.where, `its term ${held?.term} has ended`);
  }

  /** See {@link CoordState.events}. */
  async events(query: S.EventQuery = {}): Promise<S.CoordEvent[]> {
    const { after, limit } = records.eventQuery(query);
    const kvs = await this.#etcd.range(EVENTS, {
      end: prefixEnd(EVENTS),
      limit,
      newestFirst: true,
      minCreateRev: after + 1,
    });
    return kvs.reverse().map((kv) => ({
      ...records.decodeEvent(kv.value, this.where, kv.createRev),
      seq: kv.createRev,
    }));
  }

  /** See {@link CoordState.pruneEvents}. */
  pruneEvents(beforeMs: number): Promise<number> {
    return this.#etcd.deleteRange(EVENTS, b64(eventKey(records.checkTime(beforeMs))));
  }

  /** See {@link CoordState.revision}. */
  revision(): Promise<number> {
    return this.#etcd.revision();
  }

  /** See {@link CoordState.campaign}; etcd counts leases in whole seconds, so `ttlMs` rounds up. */
  campaign(id: string, ttlMs: number, signal?: AbortSignal): Promise<S.Leadership> {
    return this.#election.campaign(id, ttlMs, signal);
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
  async leader(): Promise<S.LeaderInfo | undefined> {
    const [kv] = await this.#etcd.range(LEADER_KEY);
    if (!kv) return undefined;
    const r = v.safeParse(LEADER, parseJson(kv.value));
    if (!r.success) throw new StateCorruptError(this.where, `${LEADER_KEY} is damaged`);
    return { id: r.output.id, term: kv.createRev };
  }

  /** See {@link CoordState.close}. */
  async close(): Promise<void> {
    await this.#election.close();
    this.#etcd.close();
  }

  async #tryLead(id: string, ttlMs: number): Promise<number | undefined> {
    const lease = await this.#etcd.grant(Math.ceil(ttlMs / 1000));
    const key = b64(LEADER_KEY);
    const r = await this.#etcd.txn(
      [{ key, target: "CREATE", result: "EQUAL", create_revision: "0" }],
      [{ request_put: { key, value: b64(JSON.stringify({ id })), lease } }],
    );
    if (!r.succeeded) {
      await this.#etcd.revoke(lease);
      return undefined;
    }
    this.#lease = { term: r.revision, id: lease };
    return r.revision;
  }

  async #renew(lead: S.LeaderInfo): Promise<boolean> {
    const lease = this.#lease;
    if (lease?.term !== lead.term || !await this.#etcd.keepAlive(lease.id)) return false;
    const [kv] = await this.#etcd.range(LEADER_KEY);
    return kv?.createRev === lead.term;
  }

  async #release(lead: S.LeaderInfo): Promise<void> {
    const lease = this.#lease;
    this.#lease = undefined;
    if (lease?.term === lead.term) await this.#etcd.revoke(lease.id);
  }
}

function parseJson(bytes: Uint8Array): unknown {
  try {
    return JSON.parse(new TextDecoder().decode(bytes));
  } catch {
    return undefined;
  }
}
