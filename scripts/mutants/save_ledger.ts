/**
 * `deno task mutate`'s mutants of src/paging/save_ledger.ts (SaveLedger);
 * the catalogue's rules are in scripts/mutants.ts.
 */
import type { Mutant } from "../mutants.ts";

const LEDGER = "src/paging/save_ledger.ts";

/** Mutants of SaveLedger. */
export const LEDGER_MUTANTS: readonly Mutant[] = [
  {
    id: "ledger.written-after-freeze",
    file: LEDGER,
    find: "    if (this.frozen) return;\n    for (const g of gfns) {\n",
    replace: "    for (const g of gfns) {\n",
    description: "writes after a copy-on-write point void copies (the frozen early return is lost)",
  },
  {
    id: "ledger.rule4-inverted",
    file: LEDGER,
    find: "if (!this.rules.writeVoidsMovedCopy && f !== NO_COPY)",
    replace: "if (this.rules.writeVoidsMovedCopy && f !== NO_COPY)",
    description:
      "rule 4's switch negated: with every rule on a write keeps a copy the page has left",
  },
  {
    id: "ledger.written-stamp-kept",
    file: LEDGER,
    find: "      this.copy[g] = NO_COPY;\n      this.stamp[g]++;\n",
    replace: "      this.copy[g] = NO_COPY;\n",
    description:
      "a write voids the copy but not the stamp: a save read before it and reported after",
  },
  {
    id: "ledger.stamp-set-not-bumped",
    file: LEDGER,
    find: "this.stamp[g]++;",
    replace: "this.stamp[g] = 1;",
    description: "a write sets the stamp to 1 instead of bumping it: a second write goes unseen",
  },
  {
    id: "ledger.has-inverted",
    file: LEDGER,
    find: "  has(g: number): boolean {\n    return this.copy[g] !== NO_COPY;",
    replace: "  has(g: number): boolean {\n    return this.copy[g] === NO_COPY;",
    description: "has() answers the opposite (a lost negation)",
  },
  {
    id: "ledger.missing-inverted",
    file: LEDGER,
    find: "if (this.copy[g] === NO_COPY) n++;",
    replace: "if (this.copy[g] !== NO_COPY) n++;",
    description:
      "missing() counts the pages that have a copy: the driver's last-round loop ends early",
  },
  {
    id: "ledger.claim-copied",
    file: LEDGER,
    find: "if (this.copy[g] === NO_COPY && idle(g) && (!this.frozen",
    replace: "if (idle(g) && (!this.frozen",
    description: "claim hands out pages that already have a copy (saved again, rule 3 ignored)",
  },
  {
    id: "ledger.claim-moving",
    file: LEDGER,
    find: "NO_COPY && idle(g) && (!this.frozen",
    replace: "NO_COPY && (!this.frozen",
    description:
      "claim ignores `idle`: a host is asked for pages it does not hold or that are moving",
  },
  {
    id: "ledger.claim-owner-unchecked",
    file: LEDGER,
    find: " && (!this.frozen || this.owes[g] === host + 1)) {",
    replace: ") {",
    description:
      "after the point a host claims pages another host owes (main saves a page-in's writes)",
  },
  {
    id: "ledger.claim-owner-off-by-one",
    file: LEDGER,
    find: "this.owes[g] === host + 1)) {",
    replace: "this.owes[g] === host)) {",
    description: "after the point claim compares owes with the host index, not index + 1",
  },
  {
    id: "ledger.claim-marks-off-by-one",
    file: LEDGER,
    find: "        this.owes[g] = host + 1;\n        out.push(g);",
    replace: "        this.owes[g] = host;\n        out.push(g);",
    description:
      "claim marks a page owed by the host before it (a sub-host's claim makes main owe it)",
  },
  {
    id: "ledger.claim-last-page",
    file: LEDGER,
    find: "    const out: number[] = [];\n    for (let g = 0; g < this.pages; g++) {",
    replace: "    const out: number[] = [];\n    for (let g = 0; g < this.pages - 1; g++) {",
    description: "claim never reaches the last page (off by one)",
  },
  {
    id: "ledger.freeze-copied-too",
    file: LEDGER,
    find: "if (this.copy[g] === NO_COPY) this.owes[g] = holderOf(g) + 1;",
    replace: "this.owes[g] = holderOf(g) + 1;",
    description: "freeze marks pages that have a copy owed too",
    equivalent:
      "after freeze no copy is ever voided (written returns, saved keeps the first), and " +
      "every reader of owes (claim, owedBy, so mustSaveBeforePageOut) also requires NO_COPY",
  },
  {
    id: "ledger.freeze-off-by-one",
    file: LEDGER,
    find: "this.owes[g] = holderOf(g) + 1;",
    replace: "this.owes[g] = holderOf(g);",
    description: "freeze records each page owed by the host before its holder",
  },
  {
    id: "ledger.freeze-flag-unset",
    file: LEDGER,
    find: "    this.frozen = true;\n",
    replace: "",
    description: "freeze forgets to set the frozen flag",
  },
  {
    id: "ledger.ticket-wrong-index",
    file: LEDGER,
    find: "t[i] = this.stamp[gfns[i]];",
    replace: "t[i] = this.stamp[i];",
    description: "a ticket reads the stamp of page i, not of the i-th page asked",
  },
  {
    id: "ledger.saved-ticket-by-gfn",
    file: LEDGER,
    find: "this.stamp[g] !== ticket[i]) continue;",
    replace: "this.stamp[g] !== ticket[g]) continue;",
    description: "saved looks the ticket up by gfn instead of by position",
  },
  {
    id: "ledger.saved-stamps-unchecked",
    file: LEDGER,
    find: "      if (!this.frozen && this.stamp[g] !== ticket[i]) continue;\n",
    replace: "",
    description: "saved keeps a copy whatever the stamps: a save raced by a sampled write stands",
  },
  {
    id: "ledger.saved-stamps-after-freeze",
    file: LEDGER,
    find: "if (!this.frozen && this.stamp[g] !== ticket[i])",
    replace: "if (this.stamp[g] !== ticket[i])",
    description: "saved checks stamps after the point too (a leftSaved copy's ticket is 0)",
  },
  {
    id: "ledger.saved-first-copy-replaced",
    file: LEDGER,
    find: "      if (this.frozen && this.copy[g] !== NO_COPY) continue;\n",
    replace: "",
    description: "after the point a later save replaces the first copy",
  },
  {
    id: "ledger.saved-owes-kept",
    file: LEDGER,
    find: "      this.owes[g] = NOBODY;\n",
    replace: "",
    description: "saved forgets to clear who owes the page",
  },
  {
    id: "ledger.saved-host-as-fragment",
    file: LEDGER,
    find: "const f = this.fragmentOf[host];",
    replace: "const f = host;",
    description: "saved records the host index as the fragment (right only in a first generation)",
  },
  {
    id: "ledger.reported-frozen-negated",
    file: LEDGER,
    find: "at.has(g) || this.frozen",
    replace: "at.has(g) || !this.frozen",
    description: "pages saved on their way out count before the point, not after it",
  },
  {
    id: "ledger.reported-index-swapped",
    file: LEDGER,
    find: "at.set(asked[i], i);",
    replace: "at.set(i, asked[i]);",
    description: "the gfn-to-position map is built with its arguments swapped",
  },
  {
    id: "ledger.reported-ticket-by-answer",
    file: LEDGER,
    find: "Uint32Array.from(ok, (g) => at.has(g) ? ticket[at.get(g)!] : 0)",
    replace: "Uint32Array.from(ok, (g, i) => at.has(g) ? ticket[i] : 0)",
    description:
      "a reported page is judged by the ticket at its position in the answer, not the ask",
  },
  {
    id: "ledger.reported-unfiltered",
    file: LEDGER,
    find: "return ok.filter((g) => this.copy[g] === this.fragmentOf[host]);",
    replace: "return ok;",
    description: "reported returns every page named, also those whose copy was dropped",
  },
  {
    id: "ledger.reported-other-copies",
    file: LEDGER,
    find: "return ok.filter((g) => this.copy[g] === this.fragmentOf[host]);",
    replace: "return ok.filter((g) => this.copy[g] !== NO_COPY);",
    description: "reported also names the pages whose copy is another host's",
  },
  {
    id: "ledger.pageout-copied-too",
    file: LEDGER,
    find: "if (this.copy[g] !== NO_COPY || !this.rules.saveBeforePageOut) return false;",
    replace: "if (!this.rules.saveBeforePageOut) return false;",
    description: "main saves a page that has a copy again as it leaves (rule 3 ignored)",
  },
  {
    id: "ledger.pageout-rule-unchecked",
    file: LEDGER,
    find: " || !this.rules.saveBeforePageOut) return false;",
    replace: ") return false;",
    description: "rule 2's switch is dropped: the planted bug can no longer be planted",
  },
  {
    id: "ledger.pageout-wrong-owner",
    file: LEDGER,
    find: "return !this.frozen || this.owedBy(g, MAIN);",
    replace: "return !this.frozen || this.owedBy(g, 1);",
    description: "after the point a page-out is saved if sub-host 1 owes the page, not main",
  },
  {
    id: "ledger.pageout-after-point-only",
    file: LEDGER,
    find: "return !this.frozen || this.owedBy(g, MAIN);",
    replace: "return this.owedBy(g, MAIN);",
    description: "before the point main no longer saves a page without a copy as it leaves",
  },
  {
    id: "ledger.pagemap-rule3-unchecked",
    file: LEDGER,
    find: "per[g] = this.rules.referenceCopy ? f : this.fragmentOf[holderOf(g)];",
    replace: "per[g] = f;",
    description: "rule 3's switch is dropped: the planted bug can no longer be planted",
  },
  {
    id: "ledger.pagemap-skips-page-0",
    file: LEDGER,
    find: "    for (let g = 0; g < this.pages; g++) {\n      const f = this.copy[g];",
    replace: "    for (let g = 1; g < this.pages; g++) {\n      const f = this.copy[g];",
    description: "the page map starts at page 1: page 0 maps to fragment 0 unchecked",
  },
];
