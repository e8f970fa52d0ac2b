/**
 * `deno task mutate`'s mutants of the split checkpoint's driver: src/paging/split_save.ts
 * (saveSplitPages), src/paging/split_session.ts (SplitCheckpoint) and src/paging/save_sessions.ts
 * (a sub-host's sessions), which only the simulation runs; the catalogue's rules are in
 * scripts/mutants.ts.
 */
import type { Mutant } from "../mutants.ts";

const SAVE = "src/paging/split_save.ts";
const SESSION = "src/paging/split_session.ts";
const SESSIONS = "src/paging/save_sessions.ts";

/** Mutants of the driver, main's side of a checkpoint and the sub-hosts' sessions. */
export const DRIVER_MUTANTS: readonly Mutant[] = [
  {
    id: "driver.point-without-drain",
    file: SAVE,
    find: "      await run.drain();\n",
    replace: "",
    description: "the point is taken with moves still under way (pages between hosts at the point)",
  },
  {
    id: "driver.drain-outside-lock",
    file: SAVE,
    find: '    await c.point(run.mode === "cow", async () => {\n      await run.drain();\n',
    replace:
      '    await run.drain();\n    await run.wait();\n    await c.point(run.mode === "cow", async () => {\n',
    description: "the drain ends before the point takes the memory lock: a move begins in between",
  },
  {
    id: "driver.no-wait-for-moving-pages",
    file: SAVE,
    find: "if (c.movingUnsaved() > 0 && waits++ < MAX_WAITS) await run.wait();",
    replace: "if (false) await run.wait();",
    description:
      "rounds after the point burn out while a page is on the move (issue 12's liveness)",
  },
  {
    id: "driver.parent-bits-dropped",
    file: SAVE,
    find: "    c.written(txn.bits);\n",
    replace: "",
    description: "an incremental ignores the writes since its parent: stale inherited copies",
  },
  {
    id: "driver.samples-ignored",
    file: SAVE,
    find: "    tracker.onSample = (bits) => c.written(bits);\n",
    replace: "",
    description: "dirty-log samples during the checkpoint void no copy",
  },
  {
    id: "driver.abort-keeps-bits",
    file: SAVE,
    find: "    tracker.abort(txn);\n",
    replace: "    tracker.commit(txn);\n",
    description:
      "a failed checkpoint drops the dirty bits it took: the next incremental misses them",
  },
  {
    id: "session.resave-over-copy",
    file: SESSION,
    find: "own.holderOf(g) === MAIN && !own.isMoving(g) && !this.#ledger.has(g)",
    replace: "own.holderOf(g) === MAIN && !own.isMoving(g)",
    description: "main saves from memory a page already copied aside, superseding the copy",
  },
  {
    id: "session.leaving-main-unsaved",
    file: SESSION,
    find: "if (this.#ledger.mustSaveBeforePageOut(g)) idx.push(i);",
    replace: "if (!this.#ledger.mustSaveBeforePageOut(g)) idx.push(i);",
    description: "main saves the wrong pages before they leave (rule 2 inverted)",
  },
  {
    id: "session.owe-not-sent",
    file: SESSION,
    find: "      return l.owe(owed);\n",
    replace: "      return Promise.resolve();\n",
    description: "at a cow point the sub-hosts are not told what they owe",
  },
  {
    id: "session.frozen-sub-not-asked",
    file: SESSION,
    find: "if (!gfns.length && !this.#ledger.isFrozen) return;",
    replace: "if (!gfns.length) return;",
    description: "after a cow point a sub-host with nothing claimed is not asked for its saves",
  },
  {
    id: "session.copy-aside-skipped",
    file: SESSION,
    find: "    this.#copies.push({ gfn: g, page: this.#io.readPage(g) });\n",
    replace: "",
    description: "a page main owes is recorded saved at its first write, but never copied aside",
  },
  {
    id: "session.point-lock-late",
    file: SESSION,
    find: "    return this.#io.withMemory(async () => {\n      await reach();\n",
    replace:
      "    const reached = reach();\n    return this.#io.withMemory(async () => {\n      await reached;\n",
    description: "the point is reached before the memory lock is queued for, not under it",
    equivalent: "the lock is queued for in the same turn as the drain starts, and is free then " +
      "(no move holds it across an await), so it is held from before the drain ends: as before",
  },
  {
    id: "sessions.stale-request-accepted",
    file: SESSIONS,
    find: "    if (s.id !== id) {",
    replace: "    if (s.id !== id && false) {",
    description: "a request of an aborted checkpoint saves into the next one",
  },
  {
    id: "sessions.late-begin-accepted",
    file: SESSIONS,
    find: "    if (this.#aborted.has(id)) {",
    replace: "    if (this.#aborted.has(id) && false) {",
    description: "a begin arriving after its checkpoint's abort replaces the next checkpoint",
  },
];
