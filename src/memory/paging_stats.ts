/**
 * The counters of a split VM's remote paging, kept here, below both the pager that counts them and
 * the VMM control protocol that reports them.
 */

/** Paging counters, as `vm ls --json` shows them. */
export interface PagingStats {
  /** Pages brought to main. */
  pageIns: number;
  /** Pages sent from main to sub-hosts. */
  pageOuts: number;
  /** Guest faults on non-resident pages. */
  faults: number;
  /** Faults on never-written pages, filled with zeros on main without asking their sub-host. */
  zeroFills: number;
  /** Pages each host holds, by host name. */
  residentPages: Record<string, number>;
  /** Fault service time (fault read to page installed) over the last faults. */
  faultLatencyUs: { p50: number; p99: number };
  /** Most pages main keeps. */
  mainBudgetPages: number;
  /** Total vCPU pause of page-out batches, ms. */
  pageOutPauseMs: number;
  /** Why the VM is paused by paging (a sub-host is unreachable), when it is. */
  blocked?: string;
}
