/**
 * The audit of a split VM's page ownership: with the vCPUs paused and every move finished, each
 * page must have exactly one holder, and the holder table, main's present pages and every
 * sub-host's held bitmap must agree.
 */
import { presentPages } from "./main_memory.ts";
import { MAIN } from "./ownership.ts";
import type { PagerContext } from "./pager_context.ts";

/** What the audit found. */
export interface OwnershipReport {
  /** True when every page has exactly one holder and all agree. */
  ok: boolean;
  /** Guest pages. */
  pages: number;
  /** Pages each host holds, by host name. */
  holders: Record<string, number>;
  /** The first disagreements found (at most five). */
  problems: string[];
}

/** Pauses the VM, lets every move finish (`drain`) and audits who holds each page. */
export async function auditOwnership(
  ctx: PagerContext,
  drain: () => Promise<void>,
): Promise<OwnershipReport> {
  const { ownership, memory, links, vm } = ctx;
  const pages = memory.guest.pages;
  await vm.pause();
  try {
    await drain();
    const { counts, moving } = ownership.check();
    const problems: string[] = [];
    if (moving) problems.push(`${moving} pages still moving`);
    const active = links.active();
    for (const l of active) {
      const n = l.releases.unacknowledged;
      if (n) {
        problems.push(`${n} releases to ${l.host} not acknowledged${l.down ? `: ${l.down}` : ""}`);
      }
    }
    const bitmaps = await Promise.all(active.map((l) => l.held()));
    const present = presentPages(memory.guest);
    const has = (b: Uint8Array, g: number) => (b[g >> 3] & (1 << (g & 7))) !== 0;
    for (let g = 0; g < pages && problems.length < 5; g++) {
      const h = ownership.holderOf(g);
      const subs = active.filter((_, k) => has(bitmaps[k], g)).map((l) => l.host);
      const k = active.findIndex((l) => l.index === h);
      if (
        h === MAIN ? subs.length !== 0 : present[g] || subs.length !== 1 || !has(bitmaps[k], g)
      ) {
        problems.push(
          `gfn ${g}: table says ${h === MAIN ? "main" : links.link(h).host}, main ${
            present[g] ? "has" : "lacks"
          } it, sub-hosts holding it: [${subs.join(", ")}]`,
        );
      }
    }
    const holders: Record<string, number> = { main: counts[MAIN] };
    for (const l of active) holders[l.host] = counts[l.index];
    return { ok: problems.length === 0, pages, holders, problems };
  } finally {
    vm.resume();
  }
}
