/**
 * Copies of a one-host VM's checkpoint (issue 15 item 5): its fragment streams, while it is
 * written, to R-1 of the agent's peers (`ckpt.replicate`, over QUIC as this host's agent), each
 * copy's manifest is committed there before this host's, and the manifest lists the holders. A
 * holder that does not answer at the start is passed over for the next peer; one that fails
 * mid-write fails the checkpoint in one line naming it, and the previous checkpoint stays whole.
 */
import { basename, join } from "node:path";
import { getLogger } from "@logtape/logtape";
import type { CheckpointRequest, PeerInfo } from "../ckpt/control.ts";
import { teeSinks } from "../ckpt/fragment_sink.ts";
import { type Manifest, MANIFEST_FILE } from "../ckpt/manifest.ts";
import { type HostCopies, ONE_HOST } from "../ckpt/save.ts";
import { CheckpointStore, generationName, reportedGeneration } from "../ckpt/store.ts";
import {
  type CheckpointBegun,
  CheckpointError,
  type CheckpointReport,
} from "../ckpt/transaction.ts";
import { piecesOf } from "../net/chunks.ts";
import { loadIdentity } from "../net/identity.ts";
import { RpcClient } from "../net/quic.ts";
import { ReplicaSink } from "../net/replica_sink.ts";
import { pickCopyHosts } from "../paging/copy_placement.ts";
import { type StoreHolder, storeHolders } from "../ckpt/holders.ts";
import { pruneCopies } from "./copy_retention.ts";
import { fragmentBound } from "../ckpt/fragment_layout.ts";

const log = getLogger(["dcres", "checkpoint"]);

/** A peer holding copies of this checkpoint, over one connection for the whole checkpoint. */
interface Holder {
  peer: PeerInfo;
  client: RpcClient;
  /** Its newest generation of the store. */
  newest: number;
}

/** The copies a one-host checkpoint asks for: `replicas`, else 2 with peers configured, else 1. */
export function copiesWanted(r: CheckpointRequest): number {
  return r.replicas ?? (r.peers !== undefined ? 2 : 1);
}

/**
 * Takes the one-host checkpoint `local` of a VM of `pages` pages into `dir` with the copies `r`
 * asks for: R-1 peers chosen by `pickCopyHosts`, each reached and asked its newest generation first.
 */
export async function checkpointWithCopies(
  r: CheckpointRequest,
  pages: number,
  local: (copies?: HostCopies) => Promise<CheckpointReport>,
): Promise<CheckpointReport> {
  const want = copiesWanted(r);
  // Read before retention removes generations: a holder of only those holds copies to prune too.
  const earlier = r.keep !== undefined && r.identityDir ? holdersBefore(r) : [];
  if (want <= 1) return await retainCopies(r, await local(), earlier, new Map());
  if (!r.peers || !r.identityDir || !r.host) {
    throw new CheckpointError(
      `--replicas ${want}: this VM's agent has no peers to copy its checkpoint to; start the agent with --peers HOST:PORT,... or use --replicas 1`,
    );
  }
  const store = basename(r.dir);
  let parent: Manifest | undefined;
  try {
    parent = new CheckpointStore(r.dir).latest()?.manifest;
  } catch (e) {
    // A full checkpoint does not build on it; an incremental is refused on it anyway.
    if (r.incremental) throw e;
  }
  const order = pickCopyHosts(r.peers, r.peers.length, { host: r.host, zone: r.zone }, [
    ...(parent?.fragments.at(-1)?.copies ?? []),
  ]);
  const identity = loadIdentity(r.identityDir);
  const holders: Holder[] = [];
  const passed: string[] = [];
  try {
    for (const peer of order) {
      if (holders.length === want - 1) break;
      try {
        holders.push(await reach(peer, identity, store));
      } catch (e) {
        passed.push(`${peer.host} (${peer.addr}): ${(e as Error).message}`);
        log.warn("{host} takes no copy of {store}: {error}", {
          host: peer.host,
          store,
          error: (e as Error).message,
        });
      }
    }
    if (holders.length < want - 1) {
      throw new CheckpointError(
        `--replicas ${want}: only ${holders.length} of this host's peers can take a copy (${
          passed.length ? `passed over: ${passed.join("; ")}` : `${r.peers.length} answered`
        }); start more agents, add --peers, or ask for --replicas ${holders.length + 1}`,
      );
    }
    if (parent && r.incremental) await backfillChain(r.dir, store, parent, holders);
    const rep = await local(hostCopies(r.host, r.self, store, pages, holders));
    const now = holders.map((h) => ({ host: h.peer.host, addr: h.peer.addr }));
    return await retainCopies(
      r,
      rep,
      [...now, ...earlier],
      new Map(holders.map((h) => [h.peer.host, h.client])),
    );
  } finally {
    await Promise.all(holders.map((h) => h.client.close()));
  }
}

/** The other hosts `r`'s store's manifests name as holding copies, and their addresses. */
function holdersBefore(r: CheckpointRequest): StoreHolder[] {
  try {
    return storeHolders(r.dir, [r.host, ONE_HOST]);
  } catch (e) {
    log.warn("the holders of {dir} are not known, so retention leaves their copies: {error}", {
      dir: r.dir,
      error: (e as Error).message,
    });
    return [];
  }
}

/**
 * Once `rep` committed and retention ran here (`--keep`), the same generations go on every holder
 * in `holders` (the first of each name counts), through `open`'s connections where there is one.
 */
async function retainCopies(
  r: CheckpointRequest,
  rep: CheckpointReport,
  holders: StoreHolder[],
  open: Map<string, RpcClient>,
): Promise<CheckpointReport> {
  if (!rep.retention || !r.identityDir || !holders.length) return rep;
  const once = [...new Map(holders.reverse().map((h) => [h.host, h])).values()];
  return {
    ...rep,
    retention: await pruneCopies(
      rep.retention,
      basename(r.dir),
      rep.generation,
      once,
      r.identityDir,
      open,
    ),
  };
}

/** Connects to `peer` as this host and asks its newest generation of `store`. */
async function reach(
  peer: PeerInfo,
  identity: ReturnType<typeof loadIdentity>,
  store: string,
): Promise<Holder> {
  const client = await RpcClient.connect(peer.addr, identity);
  try {
    const r = await client.call<{ generation?: unknown }>("ckpt.newest", { store });
    // The name the manifest records is the one its certificate proves, not the one it told.
    return {
      peer: { ...peer, host: client.host },
      client,
      newest: reportedGeneration(client.host, r),
    };
  } catch (e) {
    await client.close();
    throw e;
  }
}

/**
 * Gives each holder the generations of `parent`'s chain it lacks (a holder new to this VM), so it
 * can restore the incremental about to be written: fragments first, then each generation's manifest.
 */
async function backfillChain(dir: string, store: string, parent: Manifest, holders: Holder[]) {
  await Promise.all(holders.map(async (h) => {
    const lack = parent.fragments.filter((f) => !f.copies?.includes(h.peer.host));
    if (!lack.length) return;
    log.info("copying {n} fragments of {store}'s chain to {host}", {
      n: lack.length,
      store,
      host: h.peer.host,
    });
    for (const f of lack) await sendFile(h, store, dir, f.path, "ckpt.receive");
    const gens = [...new Set(lack.map((f) => generationName(f.generation)))];
    for (const g of gens) await sendFile(h, store, dir, `${g}/${MANIFEST_FILE}`, "ckpt.commit");
  }));
}

/** Sends store file `file` (under `dir`) to holder `h` whole, by `ckpt.receive` or `ckpt.commit`. */
async function sendFile(
  h: Holder,
  store: string,
  dir: string,
  file: string,
  method: "ckpt.receive" | "ckpt.commit",
) {
  const bytes = Deno.readFileSync(join(dir, file));
  const args = method === "ckpt.receive"
    ? { store, file, bytes: bytes.length, offset: 0 }
    : { store, generation: file.split("/")[0] };
  try {
    await h.client.call(method, args, { upload: piecesOf(bytes), deadlineMs: 3_600_000 });
  } catch (e) {
    throw new CheckpointError(
      `copying ${store}/${file} to ${h.peer.host} (${h.peer.addr}), which holds no copy of this VM's earlier checkpoints: ${
        (e as Error).message
      }`,
    );
  }
}

/** The copies of a checkpoint of `store` by host `host` (agent at `self`) on `holders`. */
function hostCopies(
  host: string,
  self: string | undefined,
  store: string,
  pages: number,
  holders: Holder[],
): HostCopies {
  const generation = (b: CheckpointBegun) => ({ store, generation: generationName(b.generation) });
  return {
    host,
    addrs: Object.fromEntries([
      ...(self ? [[ONE_HOST, self]] : []),
      ...holders.map((h) => [h.peer.host, h.peer.addr]),
    ]),
    ready: () => Promise.resolve(Math.max(0, ...holders.map((h) => h.newest))),
    replicas: (b) => ({
      sink: teeSinks(
        holders.map((h) =>
          new ReplicaSink((method, args, o) => h.client.call(method, args, o), {
            host: h.peer.host,
            store,
            file: `${generationName(b.generation)}/${ONE_HOST}.frag`,
            maxBytes: fragmentBound(pages),
          })
        ),
      ),
      hosts: holders.map((h) => h.peer.host),
    }),
    commit: async (b, bytes) => {
      await Promise.all(
        holders.map((h) =>
          h.client.call("ckpt.commit", generation(b), { upload: piecesOf(bytes) }).catch((e) => {
            throw new CheckpointError(
              `committing checkpoint ${b.id} on ${h.peer.host} (${h.peer.addr}) failed, so it was removed everywhere (the previous one is intact): ${
                (e as Error).message
              }`,
            );
          })
        ),
      );
    },
    abort: async (b) => {
      await Promise.all(holders.map((h) =>
        h.client.call("ckpt.abort", generation(b)).then(
          () => {},
          (e) =>
            log.debug("{host} was not told checkpoint {id} is abandoned: {error}", {
              host: h.peer.host,
              id: b.id,
              error: (e as Error).message,
            }),
        )
      ));
    },
  };
}
