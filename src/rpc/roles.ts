/**
 * Who may call what. Every cluster certificate carries one role, and every RPC method served over
 * the network names the roles that may call it; the dispatcher checks the caller's role against
 * that list before the handler runs. A caller on a root-only unix socket of this host (the agent's
 * local socket, a VMM's control socket) is `root`: it already holds everything a method could give.
 */

/** The roles a cluster certificate can carry. */
export const ROLES = ["agent", "operator", "coordinator"] as const;

/** A certificate's role: an agent (a host, and the VMMs it runs), a person's CLI, a coordinator. */
export type Role = typeof ROLES[number];

/** A caller's standing: a certificate's role, or root on this host. */
export type CallerRole = Role | "root";

/** The roles that may call each method over the network; a method not listed is refused. */
export type AccessPolicy = Readonly<Record<string, readonly Role[]>>;

/** True when `s` names a role. */
export function isRole(s: unknown): s is Role {
  return typeof s === "string" && (ROLES as readonly string[]).includes(s);
}
