/**
 * `deno task mutate`'s mutants of src/paging/sub_saver.ts (SubSaver);
 * the catalogue's rules are in scripts/mutants.ts.
 */
import type { Mutant } from "../mutants.ts";

const SAVER = "src/paging/sub_saver.ts";

/** Mutants of SubSaver. */
export const SAVER_MUTANTS: readonly Mutant[] = [
  {
    id: "saver.skip-saved-before-point",
    file: SAVER,
    find: "if (this.frozen && this.done.has(g)) continue;",
    replace: "if (this.done.has(g)) continue;",
    description: "a page saved earlier is not owed again in every mode (issue 12's bug)",
  },
  {
    id: "saver.after-point-skips-left-saved-only",
    file: SAVER,
    find: "if (this.frozen && this.done.has(g)) continue;",
    replace: "if (this.frozen && this.leftSaved.has(g)) continue;",
    description: "after the point a page saved for an earlier request is owed, and saved, again",
  },
  {
    id: "saver.resave-after-point",
    file: SAVER,
    find: "      if (this.frozen && this.done.has(g)) continue;\n",
    replace: "",
    description: "after the point a page saved since is owed, and saved, again",
  },
  {
    id: "saver.need-done-kept",
    file: SAVER,
    find: "      this.done.delete(g);\n",
    replace: "",
    description: "a page owed afresh stays done: the answer names it though it was not saved again",
  },
  {
    id: "saver.need-left-saved-kept",
    file: SAVER,
    find: "      this.leftSaved.delete(g);\n",
    replace: "",
    description: "a page owed afresh stays among those saved on their way out",
  },
  {
    id: "saver.owe-flag-unset",
    file: SAVER,
    find: "    this.need(gfns);\n    this.frozen = true;\n",
    replace: "    this.need(gfns);\n",
    description: "owe forgets to set the frozen flag",
  },
  {
    id: "saver.rule1-unchecked",
    file: SAVER,
    find: "    if (!this.rules.saveBeforePageIn) return Promise.resolve();\n",
    replace: "",
    description: "rule 1's switch is dropped: the planted bug can no longer be planted",
  },
  {
    id: "saver.leaving-owed-negated",
    file: SAVER,
    find: "if (this.owed.has(gfns[i])) now.push(gfns[i]);",
    replace: "if (!this.owed.has(gfns[i])) now.push(gfns[i]);",
    description: "a page leaving is saved first when it is not owed (a lost negation)",
  },
  {
    id: "saver.leaving-last-page",
    file: SAVER,
    find: "for (let i = 0; i < gfns.length; i++) if (this.owed.has",
    replace: "for (let i = 0; i < gfns.length - 1; i++) if (this.owed.has",
    description: "the last page of a GET or RELEASE leaves unsaved (off by one)",
  },
  {
    id: "saver.leaving-flag-lost",
    file: SAVER,
    find: "this.saveNow(now, true)",
    replace: "this.saveNow(now)",
    description: "a save before leaving is not recorded as one: it is never reported",
  },
  {
    id: "saver.leaving-unawaited",
    file: SAVER,
    find: "return now.length ? this.saveNow(now, true) : Promise.resolve();",
    replace: "if (now.length) this.saveNow(now, true);\n    return Promise.resolve();",
    description: "a page leaves without waiting for its save before leaving",
  },
  {
    id: "saver.write-not-held",
    file: SAVER,
    find: "this.owed.has(g) && this.io.holds(g)",
    replace: "this.owed.has(g)",
    description: "the saver writes owed pages its store no longer holds",
  },
  {
    id: "saver.write-not-owed",
    file: SAVER,
    find: "this.owed.has(g) && this.io.holds(g)",
    replace: "this.io.holds(g)",
    description: "the saver writes every page named that it holds, owed or not",
  },
  {
    id: "saver.written-still-owed",
    file: SAVER,
    find: "        this.owed.delete(g);\n        this.done.add(g);",
    replace: "        this.done.add(g);",
    description: "a page written stays owed: it is saved again on its next way out",
  },
  {
    id: "saver.write-unawaited",
    file: SAVER,
    find: "await this.io.write(todo);",
    replace: "this.io.write(todo);",
    description: "a page counts as saved before its fragment write completes",
  },
  {
    id: "saver.writes-unserialised",
    file: SAVER,
    find: "const p = this.chain.then(fn);",
    replace: "const p = fn();",
    description: "fragment writes no longer wait for each other",
  },
  {
    id: "saver.failed-write-poisons",
    file: SAVER,
    find: "this.chain = p.catch(() => {});",
    replace: "this.chain = p;",
    description: "one failed write makes every later save of the checkpoint fail",
  },
  {
    id: "saver.batch-off-by-one",
    file: SAVER,
    find: "gfns.slice(i, i + this.batch)",
    replace: "gfns.slice(i, i + this.batch - 1)",
    description: "each full batch leaves its last page unsaved",
  },
  {
    id: "saver.gone-still-owed",
    file: SAVER,
    find:
      "    for (const g of gfns) if (this.owed.has(g) && !this.io.holds(g)) this.owed.delete(g);\n",
    replace: "",
    description: "a requested page that left unsaved stays owed (saved when it next leaves)",
  },
  {
    id: "saver.answer-without-left-saved",
    file: SAVER,
    find: "    for (const g of this.leftSaved) out.add(g);\n",
    replace: "",
    description: "the answer omits the pages saved on their way out",
  },
  {
    id: "saver.left-saved-not-cleared",
    file: SAVER,
    find: "    this.leftSaved.clear();\n",
    replace: "",
    description: "pages saved on their way out are reported in every later answer",
  },
  {
    id: "saver.answer-done-negated",
    file: SAVER,
    find: "gfns.filter((g) => this.done.has(g))",
    replace: "gfns.filter((g) => !this.done.has(g))",
    description: "the answer names the requested pages not saved (a lost negation)",
  },
  {
    id: "saver.unsaved-wrong-set",
    file: SAVER,
    find: "return [...this.owed];",
    replace: "return [...this.done];",
    description: "unsaved() lists the pages saved, not those still owed",
  },
];
