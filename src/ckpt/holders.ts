/**
 * Who holds a checkpoint's files and where their agents are, as its manifest says: the one lookup
 * repair, restore, scrub's self-repair, retention and gc use to reach another holder.
 */
import { readManifest } from "./manifest.ts";
import type { Manifest } from "./manifest.ts";
import { ONE_HOST } from "./save.ts";
import { CheckpointStore } from "./store.ts";
import { isName } from "../codec/names.ts";

/**
 * The agent address manifest `m` records for host `name`: its `addrs` entry (1.4), else a split
 * manifest's `split.hosts` (main's is `split.mainAddr`).
 */
export function addressOf(m: Pick<Manifest, "addrs" | "split">, name: string): string | undefined {
  const known = m.addrs?.[name];
  if (known !== undefined) return known;
  const a = m.split?.hosts[name];
  return a === "main" ? m.split?.mainAddr : a;
}

/**
 * The name, as its certificate proves it, of the host that took checkpoint `m` (the VM's host):
 * `host` (1.4), else a split manifest's main; undefined for an older one-host manifest.
 */
export function takerOf(m: Manifest): string | undefined {
  if (m.host !== undefined) return m.host;
  const hosts = m.split?.hosts ?? {};
  return Object.keys(hosts).find((n) => hosts[n] === "main");
}

/**
 * The certificate name of holder `name` in manifest `m`: a one-host VM's own host is "main" there,
 * which `host` (1.4) names; undefined when an older manifest does not say who that is.
 */
export function holderName(m: Manifest, name: string): string | undefined {
  return name === ONE_HOST && !m.split ? m.host : name;
}

/** Another host holding part of a store's checkpoints, and its agent's address when known. */
export interface StoreHolder {
  /** Its name in the manifests. */
  host: string;
  /** Its agent's address (absent: no manifest records it). */
  addr?: string;
}

/**
 * The hosts that store `dir`'s committed manifests name (writers and holders of copies), other than
 * those in `skip`, with the newest manifest's address for each. A manifest that does not read is
 * passed over (retention refuses the store, naming that generation).
 */
export function storeHolders(dir: string, skip: Iterable<string | undefined>): StoreHolder[] {
  const not = new Set(skip);
  const out = new Map<string, string | undefined>();
  for (const g of new CheckpointStore(dir).generations().filter((g) => g.committed)) {
    let m: Manifest;
    try {
      m = readManifest(g.dir);
    } catch {
      continue;
    }
    for (const name of new Set(m.fragments.flatMap((f) => [f.host, ...(f.copies ?? [])]))) {
      const real = holderName(m, name) ?? name;
      if (not.has(real) || !isName("host", real)) continue;
      out.set(real, addressOf(m, name) ?? out.get(real));
    }
  }
  return [...out].map(([host, addr]) => addr ? { host, addr } : { host });
}
