/**
 * The coordinator's state, one interface over its two stores (SQLite for one coordinator, etcd for
 * several): checkpoint policies, placements, the checkpoint catalog and host leases as records with
 * revisions, an ordered event log, and the election of the one coordinator that acts. Every change
 * is a transaction that may name the revision it read of each record it touches, so two
 * coordinators acting on the same reading never both win.
 */
import type { CheckpointMode } from "../ckpt/manifest.ts";
import type { HostState } from "./host_state.ts";

/** How a VM is to be protected: `dcres coord policy set VM --every 60s --mode cow ...`. */
export interface Policy {
  /** The VM. */
  vm: string;
  /** Time between checkpoints. */
  everyMs: number;
  /** How each checkpoint is taken. */
  mode: CheckpointMode;
  /** Checkpoints save only what changed since the last. */
  incremental: boolean;
  /** With `incremental`, every this many checkpoints is a full one (0: never). */
  fullEvery: number;
  /** Generations kept. */
  keep: number;
  /** Copies of every fragment. */
  replicas: number;
}

/** Where a VM runs: its main host and, for a split VM, its sub-hosts (agent addresses). */
export interface Placement {
  /** The VM. */
  vm: string;
  /** The agent of its main host. */
  main: string;
  /** The agents of its sub-hosts, in split order; empty for a one-host VM. */
  subs: string[];
}

/** One committed checkpoint of a VM in the catalog. */
export interface CatalogEntry {
  /** The VM. */
  vm: string;
  /** The checkpoint's id (codec/names.ts `checkpoint-id`). */
  id: string;
  /** Its generation in the VM's store. */
  generation: number;
  /** When it committed (ms since the epoch): the recovery point it offers. */
  timeMs: number;
  /** The agents holding its fragments. */
  hosts: string[];
}

/** A host's lease from the coordinator: its VMs may run until `expiresMs`, under `epoch`. */
export interface HostLease {
  /** The host's agent address. */
  host: string;
  /** Wall-clock end of the lease (ms since the epoch). */
  expiresMs: number;
  /** Fencing token: raised whenever the host's VMs may have been taken over elsewhere. */
  epoch: number;
  /**
   * The host's state as last judged (schema 2): state, not history, so it outlives any pruning
   * of events. Absent until judged, and in leases an etcd store kept from schema 1.
   */
  state?: HostState;
}

/** The record of each kind. */
export interface RecordOf {
  /** By VM. */
  policy: Policy;
  /** By VM. */
  placement: Placement;
  /** By VM and checkpoint id. */
  checkpoint: CatalogEntry;
  /** By host. */
  lease: HostLease;
}

/** The kinds of record, each keyed by its own fields (records.ts `keyOf`). */
export type RecordKind = keyof RecordOf;

/** A record as read, with the revision of its last change. */
export interface Versioned<T> {
  /** The record. */
  value: T;
  /** Store revision of its last change: what a commit's `expect` names. */
  rev: number;
}

/** Something the coordinator saw or did, to be shown in `coord status`. */
export interface CoordEventInput {
  /** What happened: lowercase words joined by `-` (`host-down`, `restored`, `fenced`). */
  kind: string;
  /** When (ms since the epoch). */
  timeMs: number;
  /** The VM it concerns. */
  vm?: string;
  /** The host it concerns. */
  host?: string;
  /** For a restore: from the last heartbeat to the guest running again. */
  recoveryMs?: number;
  /** For a restore: the checkpoint restored from. */
  checkpoint?: string;
  /** For a restore: when that checkpoint committed (ms since the epoch). */
  recoveryPointMs?: number;
  /** One line for a person. */
  detail?: string;
}

/** An event as stored: `seq` orders events by their commit. */
export interface CoordEvent extends CoordEventInput {
  /** Rises with every event committed. */
  seq: number;
}

/** Writes `value`; with `expect`, only if the record is at that revision (0: does not exist). */
export type PutOp = {
  [K in RecordKind]: { op: "put"; kind: K; value: RecordOf[K]; expect?: number };
}[RecordKind];

/** Removes a record; with `expect`, only if it is at that revision. */
export interface DeleteOp {
  /** Discriminant. */
  op: "delete";
  /** Its kind. */
  kind: RecordKind;
  /** Its key (records.ts `keyOf`). */
  key: string;
  /** Revision it must be at. */
  expect?: number;
}

/** Appends an event. */
export interface EventOp {
  /** Discriminant. */
  op: "event";
  /** The event. */
  event: CoordEventInput;
}

/** One step of a transaction. */
export type StateOp = PutOp | DeleteOp | EventOp;

/** Most steps in one transaction (etcd's default limit is 128 operations). */
export const MAX_OPS = 48;

/** The coordinator this store elected. */
export interface Leadership {
  /** The id it campaigned with. */
  id: string;
  /** Fencing token: higher for every new leadership, so agents can refuse an older leader. */
  term: number;
  /** Aborts when the leadership is lost (lease lapsed, taken over, resigned). */
  signal: AbortSignal;
}

/** The current leader as the store records it. */
export interface LeaderInfo {
  /** Its id. */
  id: string;
  /** Its term. */
  term: number;
}

/** Which events to read. */
export interface EventQuery {
  /** Only events after this `seq`. */
  after?: number;
  /** At most this many, the newest (default and cap {@link MAX_EVENTS_READ}). */
  limit?: number;
}

/** Most events one read returns. */
export const MAX_EVENTS_READ = 1000;

/** The coordinator's state. Implemented by `SqliteState` and `EtcdState`. */
export interface CoordState {
  /** Which store this is, for messages: `sqlite:PATH` or `etcd://HOSTS`. */
  readonly where: string;
  /** The record of `kind` at `key`, or undefined. */
  get<K extends RecordKind>(kind: K, key: string): Promise<Versioned<RecordOf[K]> | undefined>;
  /** Every record of `kind` in key order; with `vm` (checkpoint kind only), that VM's entries. */
  list<K extends RecordKind>(kind: K, vm?: string): Promise<Versioned<RecordOf[K]>[]>;
  /**
   * Applies `ops` all or none; returns the store's new revision. Throws {@link StaleRevisionError}
   * when a record is not at its `expect` revision, and with `asLeader`, {@link NotLeaderError}
   * unless this store's leadership still holds in the store itself.
   */
  commit(ops: StateOp[], opts?: { asLeader?: boolean }): Promise<number>;
  /** Events in commit order (the newest `limit` of them). */
  events(query?: EventQuery): Promise<CoordEvent[]>;
  /** Removes the events of before `beforeMs` (their `timeMs`); returns how many went. */
  pruneEvents(beforeMs: number): Promise<number>;
  /** The store's current revision. */
  revision(): Promise<number>;
  /**
   * Resolves once this store leads under `id`, with a lease of `ttlMs` renewed in the background
   * until {@link resign} or {@link close}; a leader that stops renewing (a crash) loses it when the
   * lease lapses. Rejects when `signal` aborts.
   */
  campaign(id: string, ttlMs: number, signal?: AbortSignal): Promise<Leadership>;
  /** Gives up the leadership now, so a standby takes over without waiting for the lease. */
  resign(): Promise<void>;
  /** True while this store's leadership is held and its lease cannot yet have lapsed. */
  isLeader(): boolean;
  /** The leader the store records, if any. */
  leader(): Promise<LeaderInfo | undefined>;
  /** Resigns and closes the store. */
  close(): Promise<void>;
}

/** A commit's `expect` did not hold: someone changed the record since it was read. */
export class StaleRevisionError extends Error {
  constructor(
    /** The record's kind. */
    readonly kind: RecordKind,
    /** Its key. */
    readonly key: string,
    /** The revision the commit expected. */
    readonly expected: number,
    /** The revision found (0: absent). */
    readonly actual: number,
  ) {
    super(
      `${kind} ${key} is at revision ${actual || "(absent)"}, not ${
        expected || "(absent)"
      } as read: another coordinator or command changed it; read it again and retry`,
    );
    this.name = "StaleRevisionError";
  }
}

/** A commit as leader from a store whose leadership does not hold. */
export class NotLeaderError extends Error {
  constructor(where: string, why: string) {
    super(`${where}: not the leader (${why}); only the elected coordinator may act`);
    this.name = "NotLeaderError";
  }
}

/** What the store holds cannot be used: damaged, oversized, or written by a newer dcres. */
export class StateCorruptError extends Error {
  constructor(where: string, problem: string) {
    super(`${where}: ${problem}`);
    this.name = "StateCorruptError";
  }
}

/** A record or event handed to a commit that breaks its rules (names, ranges, size); nothing is written. */
export class RecordError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "RecordError";
  }
}

/** The store could not be opened or reached. */
export class StateStoreError extends Error {
  constructor(where: string, problem: string) {
    super(`${where}: ${problem}`);
    this.name = "StateStoreError";
  }
}
