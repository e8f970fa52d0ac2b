/**
 * A sub-host's checkpoints under way, one per VM, each named by its checkpoint id. Every request of
 * a checkpoint names it: a request of a checkpoint that failed can arrive after the next one began
 * (its caller gave up at a deadline), and must neither save into that one nor abort it.
 */

/** A request names no checkpoint under way here, or one that failed. */
export class SaveSessionError extends Error {
  constructor(
    /** "stale": not the checkpoint under way (or none is); "failed": saving here failed. */
    readonly kind: "stale" | "failed",
    message: string,
  ) {
    super(message);
    this.name = "SaveSessionError";
  }
}

/** What every session carries. */
export interface SaveSessionBase {
  /** The checkpoint's id. */
  readonly id: string;
  /** Why saving on this host failed, if it did (the checkpoint then fails; paging goes on). */
  failed?: string;
}

/** Aborted checkpoint ids remembered, so that their late begins are refused. */
const ABORTED_KEPT = 64;

/** The sessions of one sub-host, by VM. */
export class SaveSessions<S extends SaveSessionBase> {
  readonly #byVm = new Map<string, S>();
  readonly #aborted = new Set<string>();

  /** The session of `vm`, whichever checkpoint it is (pages leaving consult it). */
  current(vm: string): S | undefined {
    return this.#byVm.get(vm);
  }

  /** The session of `vm`, which must be checkpoint `id` and not have failed. */
  get(vm: string, id: unknown): S {
    const s = this.#byVm.get(vm);
    if (!s) throw new SaveSessionError("stale", `no checkpoint of ${vm} is under way on this host`);
    if (s.id !== id) {
      throw new SaveSessionError(
        "stale",
        `checkpoint ${String(id)} of ${vm} is not the one under way on this host (${s.id})`,
      );
    }
    if (s.failed) throw new SaveSessionError("failed", `saving on this host failed: ${s.failed}`);
    return s;
  }

  /**
   * Throws unless checkpoint `id` may begin here: one already aborted may not (its begin arrived
   * after main gave up on it, and would replace the checkpoint under way).
   */
  mayBegin(id: string): void {
    if (this.#aborted.has(id)) {
      throw new SaveSessionError("stale", `checkpoint ${id} was aborted; it cannot begin again`);
    }
  }

  /** Starts `s` for `vm` (the caller ended any session before it). */
  set(vm: string, s: S): void {
    this.mayBegin(s.id);
    this.#byVm.set(vm, s);
  }

  /** Checkpoint `id` of `vm` is aborted: its session ends, and it may not begin later. */
  abort(vm: string, id: string): S | undefined {
    this.#aborted.add(id);
    if (this.#aborted.size > ABORTED_KEPT) {
      this.#aborted.delete(this.#aborted.values().next().value!);
    }
    return this.end(vm, id);
  }

  /** Ends the session of `vm` if it is checkpoint `id` (any, without `id`); returns it. */
  end(vm: string, id?: string): S | undefined {
    const s = this.#byVm.get(vm);
    if (!s || (id !== undefined && s.id !== id)) return undefined;
    this.#byVm.delete(vm);
    return s;
  }
}
