/**
 * Whether a host is up, suspect or down, from its heartbeats. Suspect is only a warning; down lets
 * the coordinator take the host's VMs elsewhere, so it needs both the configured silence and the
 * host's lease to have surely lapsed there (its VMs have fenced themselves by then).
 */

/** A host's state as the coordinator sees it. */
export type HostState = "up" | "suspect" | "down";

/** The silences that make a host suspect, then down. */
export interface HostTimeouts {
  /** Ms without a heartbeat answered before a host is suspect. */
  suspectMs: number;
  /** Ms without a heartbeat answered before a host may be declared down. */
  downMs: number;
}

/** What the coordinator knows of a host at one moment (its own monotonic clock). */
export interface HostView {
  /** Its state so far. */
  state: HostState;
  /** When it last answered a heartbeat (or when watching it began, if it never has). */
  lastOkAt: number;
  /** True when its last heartbeat was answered. */
  answered: boolean;
  /** True once its lease has surely lapsed there (`GrantedLease.lapsed`). */
  leaseLapsed: boolean;
}

/** The state `view` leads to at `now`. */
export function nextHostState(view: HostView, now: number, t: HostTimeouts): HostState {
  if (view.answered) return "up";
  const silent = now - view.lastOkAt;
  if (view.state === "down") return "down";
  if (silent >= t.downMs && view.leaseLapsed) return "down";
  if (silent >= t.suspectMs) return "suspect";
  return view.state;
}
