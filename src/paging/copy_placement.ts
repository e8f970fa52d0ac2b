/**
 * Where copies of checkpoint fragments go when the hosts' zones are known (issue 15, `--zone`): a
 * copy goes first to a host in a zone that holds no copy of the fragment yet, so losing one zone
 * loses at most one copy while there are zones enough; never to a host that already holds one.
 */
import type { PeerInfo } from "../ckpt/control.ts";
import { ReplicaPlacementError, ringPlacement } from "./split_replicas.ts";

/** True when rank `a` sorts strictly before rank `b` (compared field by field). */
function before(a: number[], b: number[]): boolean {
  const d = a.findIndex((x, i) => x !== b[i]);
  return d >= 0 && a[d] < b[d];
}

/**
 * The `n` hosts among `candidates` to copy a one-host VM's fragment to (this host, `self` in zone
 * `zone`, excluded): the holders of the previous generation's copies first (`sticky`, so each
 * holder keeps the whole chain), then hosts in a zone no chosen host is in, then the most free
 * store space. Fewer than `n` when too few candidates are left.
 */
export function pickCopyHosts(
  candidates: PeerInfo[],
  n: number,
  self: { host: string; zone?: string },
  sticky: string[] = [],
): PeerInfo[] {
  const pool = candidates.filter((c, i) =>
    c.host !== self.host && candidates.findIndex((d) => d.host === c.host) === i
  );
  const chosen: PeerInfo[] = [];
  const zones = new Set(self.zone === undefined ? [] : [self.zone]);
  while (chosen.length < n && pool.length) {
    const score = (c: PeerInfo) => [
      sticky.includes(c.host) ? 0 : 1,
      c.zone !== undefined && !zones.has(c.zone) ? 0 : 1,
      -c.freeBytes,
    ];
    const best = pool.reduce((a, c, i) => before(score(c), score(pool[a])) ? i : a, 0);
    const [c] = pool.splice(best, 1);
    chosen.push(c);
    if (c.zone !== undefined) zones.add(c.zone);
  }
  return chosen;
}

/**
 * For each of a split checkpoint's participants (0 being main) in zone `zones[k]` (undefined when
 * unlabelled), the participants holding copies of its fragment: ring placement when no zone is
 * known; else, for each fragment in turn, the hosts in zones that hold none of its copies yet
 * first, then the fewest copies held so far, then the ring's order. No two copies share a host.
 */
export function zonedPlacement(zones: (string | undefined)[], replicas: number): number[][] {
  const ring = ringPlacement(zones.length, replicas);
  if (zones.every((z) => z === undefined)) return ring;
  const n = zones.length;
  const load = new Array(n).fill(0);
  return ring.map((_, k) => {
    const taken = new Set([k]);
    const inZones = new Set(zones[k] === undefined ? [] : [zones[k]]);
    const out: number[] = [];
    while (out.length < replicas - 1) {
      const rank = (j: number) => [
        zones[j] !== undefined && !inZones.has(zones[j]) ? 0 : 1,
        load[j],
        (j - k + n) % n,
      ];
      const free = Array.from({ length: n }, (_, j) => j).filter((j) => !taken.has(j));
      if (!free.length) throw new ReplicaPlacementError(`no host is left for a copy of ${k}`);
      const j = free.reduce((a, b) => before(rank(b), rank(a)) ? b : a);
      out.push(j);
      taken.add(j);
      load[j]++;
      if (zones[j] !== undefined) inZones.add(zones[j]!);
    }
    return out;
  });
}
