/**
 * What the parts of a split VM's pager (fault service, budget, split migration, audit) share: the
 * pages and where they are, the links to the sub-hosts, the VM and its dirty log, and the memory lock
 * under which every move begins.
 */
import type { LazyFill } from "../ckpt/lazy_fill.ts";
import type { DirtyTracker } from "../memory/dirty_tracker.ts";
import type { MainMemory } from "./main_memory.ts";
import type { PageOwnership } from "./ownership.ts";
import type { SubHosts } from "./sub_hosts.ts";

/** What the pager needs of the VM. */
export interface PausableVm {
  /** Pauses every vCPU (nests). */
  pause(): Promise<number>;
  /** Ends one pause. */
  resume(): void;
}

/** The state every part of the pager works on; the pager owns it. */
export interface PagerContext {
  /** Main's memory under userfaultfd. */
  readonly memory: MainMemory;
  /** The holder table: every move goes through it. */
  readonly ownership: PageOwnership;
  /** The sub-hosts. */
  readonly links: SubHosts;
  /**
   * 1: the page's sub-host holds it as a zero page it was given without data and never sent since,
   * so a fault needs no round trip: main takes it over as a zero page and releases the sub's copy.
   */
  readonly zero: Uint8Array;
  /** The VM, for pauses. */
  readonly vm: PausableVm;
  /** Its dirty log. */
  readonly tracker: DirtyTracker;
  /** Low pages the VMM reads itself; they never leave main. */
  readonly pinned: number;
  /** A lazy restore's pages of main still only in the checkpoint, if any. */
  readonly local?: LazyFill;
  /** True once paging stops. */
  stopped(): boolean;
  /** Runs `fn` under the memory lock: no move may begin outside it. */
  withMemory<T>(fn: () => Promise<T> | T): Promise<T>;
}
