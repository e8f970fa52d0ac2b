/**
 * The one save/restore interface of every stateful VMM component (as Firecracker's `Persist`):
 * `save()` returns a plain, self-describing state object (field names, not positions, so a newer
 * reader can add fields); each component class has a static `restore(args, state)` that builds a
 * fresh component from it.
 */
export interface Persist<State> {
  /** The component's complete state, safe to encode (CBOR) and store. */
  save(): State;
}
