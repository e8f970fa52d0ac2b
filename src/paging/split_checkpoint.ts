/**
 * The parallel checkpoint of a split VM, run by its main host: every host saves the pages it holds
 * into its own fragment at once (sub-hosts from their page stores, main from guest memory), so no
 * page crosses the network to be saved; main adds the machine state; the manifest names, for every
 * page, the fragment holding its copy, and is committed on every participant once every fragment is
 * durable. Paging goes on meanwhile in precopy and cow; docs/CONSISTENCY.md gives the rules that
 * keep the checkpoint the memory of one instant, and SaveLedger keeps them.
 */
import { getLogger } from "@logtape/logtape";
import type { FragmentWriter } from "../ckpt/fragment_writer.ts";
import type { Manifest } from "../ckpt/manifest.ts";
import { expandPageMap } from "../ckpt/page_map.ts";
import { CheckpointStore, generationName } from "../ckpt/store.ts";
import {
  type CheckpointBegun,
  CheckpointError,
  type CheckpointOptions,
  type CheckpointParticipant,
  type CheckpointReport,
  localParticipant,
  type ParticipantFragment,
  runCheckpoint,
} from "../ckpt/transaction.ts";
import type { DirtyTracker } from "../memory/dirty_tracker.ts";
import type { Machine } from "../vmm/machine.ts";
import { piecesOf } from "../net/chunks.ts";
import { MAIN } from "./ownership.ts";
import type { RemotePager } from "./remote_pager.ts";
import { newestOnSubs } from "./split_merge.ts";
import { type ReplicaHost, ReplicaPlacementError } from "./split_replicas.ts";
import { fragmentBound } from "../ckpt/fragment_layout.ts";
import { zonedPlacement } from "./copy_placement.ts";
import { ReplicaSink } from "../net/replica_sink.ts";
import { teeSinks } from "../ckpt/fragment_sink.ts";
import { saveSplitPages } from "./split_save.ts";
import { pagerSaveIo } from "./split_save_io.ts";
import { SplitCheckpoint } from "./split_session.ts";
import type { SubLink } from "./sub_link.ts";
import { PAGE_SIZE } from "../accel/accel.ts";
import { sleep } from "../rpc/deadline.ts";

const log = getLogger(["dcres", "checkpoint"]);

/** A split VM's checkpoint report: the single-host one plus where pages were saved. */
export interface SplitCheckpointReport extends CheckpointReport {
  /** Pages each host saved (stored or zero), by host name. */
  pagesSaved: Record<string, number>;
  /** Pages that crossed the network to be saved. */
  pagesSentToSave: number;
  /** Pages paged in or out while the checkpoint ran. */
  pagesMovedMeanwhile: number;
}

/** Options of a split VM's checkpoint. */
export interface SplitCheckpointOptions extends CheckpointOptions {
  /** This (main) host's name, naming its fragment. */
  host: string;
  /** Copies of every fragment, on distinct hosts (default 1: the writer's own). */
  replicas?: number;
  /** This host's agent address, where sub-hosts send copies of their fragments. */
  self?: string;
  /** Zone labels of hosts by address, where known: copies go to other zones first. */
  zones?: Record<string, string>;
}

/**
 * A sub-host's summary of its fragment, checked before the manifest records it: counts are whole
 * and not negative, and the path is a fragment file in this generation's directory (a peer names
 * no other file).
 */
function fragmentFrom(
  host: string,
  b: CheckpointBegun,
  s: Record<string, unknown>,
): ParticipantFragment {
  const fields = ["pages", "zeroPages", "rewrites", "dataBytes", "fileBytes", "footerCrc"] as const;
  for (const f of fields) {
    const v = s[f];
    if (!Number.isSafeInteger(v) || (v as number) < 0) {
      throw new Error(`${host} reported its fragment's ${f} as ${JSON.stringify(v)}`);
    }
  }
  const gen = generationName(b.generation), path = s.path;
  const name = typeof path === "string" && path.startsWith(`${gen}/`)
    ? path.slice(gen.length + 1)
    : "";
  if (!/^[A-Za-z0-9_-][A-Za-z0-9._-]*\.frag$/.test(name)) {
    throw new Error(`${host} reported its fragment at ${JSON.stringify(path)}, not in ${gen}/`);
  }
  const n = (f: (typeof fields)[number]) => s[f] as number;
  return {
    path: path as string,
    pages: n("pages"),
    zeroPages: n("zeroPages"),
    rewrites: n("rewrites"),
    dataBytes: n("dataBytes"),
    fileBytes: n("fileBytes"),
    footerCrc: n("footerCrc"),
  };
}

/**
 * Sub-host `l`'s part of checkpoint `b`, over its `pages.save*` calls (each names the checkpoint,
 * so a late one is refused there).
 */
function subParticipant(
  l: SubLink,
  b: CheckpointBegun,
  opts: CheckpointOptions,
  replicas: ReplicaHost[],
) {
  const id = b.id;
  return {
    host: l.host,
    async begin() {
      await l.call("pages.save.begin", {
        id,
        generation: b.generation,
        compress: opts.compress,
        ...(replicas.length ? { replicas } : {}),
      });
    },
    async finish(): Promise<ParticipantFragment> {
      // The sub-host answers once its fragment and every copy of it are durable.
      const f = fragmentFrom(
        l.host,
        b,
        await l.call<Record<string, unknown>>("pages.save.finish", { id }),
      );
      return replicas.length ? { ...f, copies: replicas.map((r) => r.host) } : f;
    },
    async commit(bytes: Uint8Array) {
      await l.call("pages.save.commit", { id }, { upload: piecesOf(bytes) });
    },
    // A host that cannot be told (it may be why the checkpoint failed) drops the generation at its
    // next begin, and refuses nothing of this one that is committed elsewhere: none is.
    abort: () =>
      l.call("pages.save.abort", { id }).then(
        () => {},
        (e) =>
          log.debug("sub-host {host} was not told checkpoint {id} is abandoned: {error}", {
            host: l.host,
            id,
            error: (e as Error).message,
          }),
      ),
  } satisfies CheckpointParticipant;
}

/** Takes a parallel checkpoint of split VM `m`; on failure no participant keeps any of it. */
export async function takeSplitCheckpoint(
  m: Machine,
  tracker: DirtyTracker,
  pager: RemotePager,
  opts: SplitCheckpointOptions,
): Promise<SplitCheckpointReport> {
  const mem = m.vm.memory;
  let subs: SubLink[] = [];
  let hosts: ReplicaHost[] = [];
  let placement: number[][] = [];
  const moves0 = pager.stats().pageIns + pager.stats().pageOuts;
  let writer: FragmentWriter | undefined;
  let c: SplitCheckpoint | undefined;
  const { report } = await runCheckpoint({
    opts,
    tracker,
    vm: m.spec.name,
    memSize: m.spec.memSize,
    // Every participant must be reachable before anything is written.
    ready: async () => {
      await pager.ensureLinks();
      subs = pager.subLinks();
      hosts = [
        { host: opts.host, addr: opts.self ?? "" },
        ...subs.map((l) => ({ host: l.host, addr: l.addr })),
      ];
      placement = zonedPlacement(hosts.map((h) => opts.zones?.[h.addr]), opts.replicas ?? 1);
      if (!opts.self && placement.some((to) => to.includes(0))) {
        throw new ReplicaPlacementError(
          `--replicas ${opts.replicas}: this host's agent address is unknown, so no sub-host can copy its fragment here`,
        );
      }
      if (opts.incremental) {
        // The parent runCheckpoint builds on: refused here, before a generation is begun.
        checkChainWriters(
          new CheckpointStore(opts.dir).latest()?.manifest,
          hosts.map((h) => h.host),
        );
      }
      // Sub-hosts keep their fragments in the store named after the VM.
      return await newestOnSubs(subs, m.spec.name);
    },
    participants: (b) => {
      const file = `${generationName(b.generation)}/${opts.host}.frag`;
      const sinks = placement[0].map((j) => {
        const l = subs[j - 1];
        return new ReplicaSink((method, args, o) => l.call(method, args, o), {
          host: l.host,
          store: m.spec.name,
          file,
          maxBytes: fragmentBound(mem.pages),
        });
      });
      const local = localParticipant(
        opts.host,
        opts,
        b,
        sinks.length
          ? { sink: teeSinks(sinks), hosts: placement[0].map((j) => hosts[j].host) }
          : undefined,
      );
      writer = local.writer;
      return [
        local.participant,
        ...subs.map((l, k) => subParticipant(l, b, opts, placement[k + 1].map((j) => hosts[j]))),
      ];
    },
    save: async (b) => {
      const fragmentOf = new Array(pager.ownership.hosts).fill(-1);
      fragmentOf[MAIN] = b.base;
      subs.forEach((l, k) => fragmentOf[l.index] = b.base + 1 + k);
      const inherited = b.parent
        ? Int32Array.from(expandPageMap(b.parent.manifest.pageMap, mem.pages))
        : undefined;
      c = new SplitCheckpoint(pagerSaveIo(pager, writer!, subs, b.id), fragmentOf, inherited);
      pager.saver = c;
      let machine: ReturnType<Machine["save"]> | undefined;
      try {
        const saved = await saveSplitPages(c, {
          mode: opts.mode,
          maxDowntimeMs: opts.maxDowntimeMs,
          tracker,
          pause: () => m.vm.pause(),
          resume: () => {
            if (!m.vm.isStopped) m.vm.resume();
          },
          drain: () => pager.drain(),
          atPoint: () => {
            machine = m.save();
            opts.onConsistencyPoint?.();
          },
          wait: () => sleep(5),
          now: () => performance.now(),
          onProgress: opts.onProgress,
        });
        return { ...saved, machine: machine! };
      } finally {
        pager.saver = undefined;
      }
    },
    extend: (plain) => ({
      ...plain,
      host: opts.host,
      addrs: Object.fromEntries([
        ...(opts.self ? [[opts.host, opts.self]] : []),
        ...subs.map((l) => [l.host, l.addr]),
      ]),
      split: {
        mainMemBytes: pager.stats().mainBudgetPages * PAGE_SIZE,
        hosts: { [opts.host]: "main", ...Object.fromEntries(subs.map((l) => [l.host, l.addr])) },
        ...(opts.self ? { mainAddr: opts.self } : {}),
      },
    }),
  }).catch((e) => {
    log.error("checkpoint of {vm} failed: {error}", {
      vm: m.spec.name,
      error: (e as Error).message,
    });
    throw e;
  });
  log.info("checkpoint {id} of {vm}: {pages} pages saved on {hosts} hosts", {
    id: report.id,
    vm: m.spec.name,
    pages: report.stats.pagesSaved,
    hosts: subs.length + 1,
  });
  const counts = c!.counts();
  return {
    ...report,
    pagesSaved: {
      [opts.host]: counts[MAIN],
      ...Object.fromEntries(subs.map((l) => [l.host, counts[l.index]])),
    },
    pagesSentToSave: c!.sentToSave,
    pagesMovedMeanwhile: pager.stats().pageIns + pager.stats().pageOuts - moves0,
  };
}

/**
 * An incremental builds on its parent's chain, and a restore places each of the chain's fragments
 * by its writer's part in the newest split: so every writer must still be a host of this VM. After
 * a restore onto other hosts, the first checkpoint is full.
 */
function checkChainWriters(parent: Manifest | undefined, hosts: string[]): void {
  if (!parent) return;
  const gone = [...new Set(parent.fragments.map((f) => f.host))].filter((h) => !hosts.includes(h));
  if (!gone.length) return;
  throw new CheckpointError(
    `--incremental: the chain of generation ${parent.generation} holds fragments written by ${
      gone.join(", ")
    }, no longer a host of this VM (it was restored onto other hosts); take a full checkpoint first`,
  );
}
