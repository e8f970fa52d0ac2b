/**
 * What a committed generation of the consistency model saved, checked beside its restore: which
 * pages each host wrote to its fragment and how often, against why it was asked to; the
 * incremental base; and the savers' and the ledger's own counts.
 */
import { expandPageMap } from "../../src/ckpt/page_map.ts";
import { MAIN } from "../../src/paging/ownership.ts";
import type { SaveLedger } from "../../src/paging/save_ledger.ts";
import type { SubSaver } from "../../src/paging/sub_saver.ts";
import type { Committed, Fragment } from "./ledger_model_chain.ts";
import type { Mode } from "./ledger_model_steps.ts";

/** A generation about to commit, as the audit sees it. */
export interface Audited {
  mode: Mode;
  ledger: SaveLedger;
  /** This generation's fragment index on each host. */
  fragOf: number[];
  /** The chain's fragments, the parents' first. */
  frags: Fragment[];
  /** The committed checkpoint it is an incremental of (null: a full one). */
  parent: Committed | null;
  /** Memory and holders at its consistency point. */
  truth: Int32Array;
  holder: Uint8Array;
  savers: Map<number, SubSaver>;
  /** True while sub-host `s`'s store holds `g`. */
  holds(s: number, g: number): boolean;
}

/** The asks and answers of one generation, and the checks run on them at its commit. */
export class SaveAudit {
  /** Per sub-host and page: requests received naming it, and its list at a cow point. */
  private readonly asks = new Map<number, Map<number, number>>();
  /** Per sub-host: pages SaveLedger.reported said stand (what the driver counts as saved). */
  private readonly stood = new Map<number, Set<number>>();

  /** Sub-host `s` was asked for `gfns`. */
  ask(s: number, gfns: Iterable<number>): void {
    const m = this.asks.get(s) ?? new Map<number, number>();
    for (const g of gfns) m.set(g, (m.get(g) ?? 0) + 1);
    this.asks.set(s, m);
  }

  /** The ledger took `gfns` from sub-host `s`'s answer. */
  stand(s: number, gfns: Iterable<number>): void {
    const set = this.stood.get(s) ?? new Set<number>();
    for (const g of gfns) set.add(g);
    this.stood.set(s, set);
  }

  /** What is wrong with what `x` saved, or undefined. */
  wrong(x: Audited): string | undefined {
    const pages = x.truth.length, hosts = x.fragOf.length;
    const mine = x.fragOf.map((f) => x.frags[f]);
    const missing = x.ledger.missing();
    if (missing) return `the ledger misses ${missing} pages at commit`;
    const base = x.parent ? expandPageMap(x.parent.map, pages) : undefined;
    for (let g = 0; g < pages; g++) {
      const writes = mine.map((f) => f.writes.get(g) ?? 0);
      const total = writes.reduce((a, b) => a + b, 0);
      // The incremental base: a page the guest did not write between the parent's point and this
      // one (versions are never reused, so equal contents mean no write) keeps the parent's copy,
      // which holds; a save of it would only cost a write and risk later contents.
      if (base && x.truth[g] === x.parent!.truth[g]) {
        if (x.ledger.copy[g] !== base[g]) {
          return `gfn ${g}, unchanged since the parent's point, lost its copy in fragment ` +
            `${base[g]} (the ledger names ${x.ledger.copy[g]})`;
        }
        if (total) return `gfn ${g}, unchanged since the parent's point, was saved again`;
      }
      // A sub-host saves a page once per request naming it (or its list at a cow point): before
      // the point every request owes it afresh, and a page owed is saved on its way out or in the
      // request's batches, never both. More writes are saves nobody asked for.
      for (let s = 1; s < hosts; s++) {
        const asked = this.asks.get(s)?.get(g) ?? 0;
        if (writes[s] > asked) {
          return `sub-host ${s} wrote gfn ${g} ${writes[s]} times, asked ${asked} times`;
        }
      }
      // Copy-on-write: the point's contents of a page are on the host that held it there and
      // nowhere else, so only that host writes it (the ledger says who owes what from the point
      // on). A sub-host writes it once: it holds the point's contents until the page leaves, and
      // saves it before; a second write would be a page that came back, maybe written since, and
      // the fragment's last copy is the one read back. Main writes it again only while its first
      // save had not reached the ledger (checked as main saves): a guest write during main's
      // round is copied aside and appended after it, and that copy is the one read back.
      if (x.mode === "cow" && total) {
        for (let h = 0; h < hosts; h++) {
          if (writes[h] && h !== x.holder[g]) {
            return `gfn ${g}, held by host ${x.holder[g]} at the point, was written by host ${h}`;
          }
        }
        if (x.holder[g] !== MAIN && total > 1) {
          return `gfn ${g} was written ${total} times after the copy-on-write point`;
        }
      }
    }
    return this.countsWrong(x, mine);
  }

  /** The savers' counts and the ledger's answers add up with what the fragments hold. */
  private countsWrong(x: Audited, mine: Fragment[]): string | undefined {
    for (let s = 1; s < x.fragOf.length; s++) {
      const saver = x.savers.get(s)!, f = mine[s];
      if (saver.saved !== f.writes.size) {
        return `sub-host ${s}'s saver counts ${saver.saved} pages saved; it wrote ${f.writes.size}`;
      }
      // After a cow point every page a sub-host owes is saved: nobody else holds its contents at
      // the point. (Before it, a request can end owing a page that went and came back, which the
      // ledger then takes from another host; the saver saves it once more if it leaves again.)
      const owed = saver.unsaved();
      if (x.mode === "cow" && owed.length) return `sub-host ${s} still owes ${owed} at commit`;
      // A page owed is saved before it leaves, and one a request finds gone is owed no more: a
      // page still owed is still there.
      const gone = owed.filter((g) => !x.holds(s, g));
      if (gone.length) return `sub-host ${s} still owes ${gone}, which it no longer holds`;
      const stood = this.stood.get(s) ?? new Set<number>();
      for (let g = 0; g < x.truth.length; g++) {
        if (x.ledger.copy[g] === x.fragOf[s] && !stood.has(g)) {
          return `gfn ${g}'s copy is sub-host ${s}'s, but no answer the ledger took named it`;
        }
      }
      for (const g of stood) {
        if (!f.writes.has(g)) {
          return `the ledger took gfn ${g} from sub-host ${s}, which never wrote it`;
        }
      }
    }
  }
}
