/**
 * Where the coordinator restores a VM whose host failed (docs/COORDINATOR.md, "Failure
 * handling"): the checkpoint's split shape (as many sub-hosts as it was taken with) when enough
 * hosts are up, otherwise as many sub-hosts as there are, otherwise one host; each part goes where
 * a whole copy of its fragments already is, so as little as possible crosses the network before the
 * guest runs. Pure: the daemon gathers the facts, this decides.
 */

/** What the rule decides from. */
export interface RestoreRuleInput {
  /** The checkpoint's main host, by its name in the manifest. */
  mainRole: string;
  /** Its sub-hosts by name, in split order. */
  subRoles: string[];
  /** Bytes of fragments each host of the checkpoint (by name) wrote. */
  roleBytes: Record<string, number>;
  /** The hosts that may take a part (up, not the failed ones), agent addresses in config order. */
  up: string[];
  /** Bytes of each role's fragments whole on each host (address → role → bytes). */
  held: Record<string, Record<string, number>>;
  /** The VM's hosts before the failure, main first: preferred among equals. */
  previous: string[];
}

/** Where the restore puts the VM. */
export interface RestoreChoice {
  /** The restored VM's main host. */
  main: string;
  /** Its sub-hosts. */
  subs: string[];
  /** Each host of the checkpoint (by name) → the host that plays its part. */
  assign: Record<string, string>;
}

/** The targets for `input`, or undefined when no host is up. */
export function chooseRestoreTargets(input: RestoreRuleInput): RestoreChoice | undefined {
  const { mainRole, subRoles, roleBytes, up, held, previous } = input;
  if (!up.length) return undefined;
  const has = (a: string, role: string) => held[a]?.[role] ?? 0;
  const rank = (a: string) => {
    const i = previous.indexOf(a);
    return i < 0 ? previous.length : i;
  };
  // Most of `role` held first; then a host the VM used, then config order.
  const best = (from: string[], role: string) =>
    from.reduce((a, b) => {
      const d = has(b, role) - has(a, role);
      if (d !== 0) return d > 0 ? b : a;
      const r = rank(b) - rank(a);
      if (r !== 0) return r < 0 ? b : a;
      return up.indexOf(b) < up.indexOf(a) ? b : a;
    });
  const main = best(up, mainRole);
  const assign: Record<string, string> = { [mainRole]: main };
  const slots = Math.min(subRoles.length, up.length - 1);
  const free = up.filter((a) => a !== main);
  const subs: string[] = [];
  // The biggest parts pick their hosts first.
  const order = [...subRoles].sort((a, b) => (roleBytes[b] ?? 0) - (roleBytes[a] ?? 0));
  const load = new Map<string, number>();
  for (const role of order) {
    let to: string;
    if (subs.length < slots) {
      to = best(free, role);
      free.splice(free.indexOf(to), 1);
      subs.push(to);
    } else {
      // More parts than hosts: a part shares the host holding most of it, else the least loaded.
      const among = subs.length ? subs : [main];
      const most = Math.max(...among.map((a) => has(a, role)));
      const fits = among.filter((a) => has(a, role) === most);
      to = fits.reduce((a, b) => (load.get(b) ?? 0) < (load.get(a) ?? 0) ? b : a);
    }
    assign[role] = to;
    load.set(to, (load.get(to) ?? 0) + (roleBytes[role] ?? 0));
  }
  const subs_ = subRoles.map((r) => assign[r]);
  return {
    main,
    subs: subs_.filter((a, i) => a !== main && subs_.indexOf(a) === i),
    assign,
  };
}
