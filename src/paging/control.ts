/**
 * The split-memory operations of a running machine's control socket: start split, split a running
 * VM (split migration), gather it back onto this host, and check page ownership.
 */
import type { CheckpointRequest } from "../ckpt/control.ts";
import type { CheckpointOptions, CheckpointReport } from "../ckpt/transaction.ts";
import type { OpenCheckpoint } from "../ckpt/open_checkpoint.ts";
import type { DirtyTracker } from "../memory/dirty_tracker.ts";
import { loadIdentity } from "../net/identity.ts";
import { RpcError } from "../rpc/errors.ts";
import type { ExtraHandler } from "../vmm/control/server.ts";
import { type Machine, pinnedPages, splitRefusal } from "../vmm/machine.ts";
import { type PagerOptions, RemotePager, type SplitSpec } from "./remote_pager.ts";
import { type SplitCheckpointReport, takeSplitCheckpoint } from "./split_checkpoint.ts";
import { chainLength, MERGE_AFTER, mergeSplitChain } from "./split_merge.ts";
import { readManifest } from "../ckpt/manifest.ts";
import { generationName } from "../ckpt/store.ts";
import { dirname, join } from "node:path";
import { retainOnHosts } from "./split_retention.ts";
import { getLogger } from "@logtape/logtape";

const log = getLogger(["dcres", "checkpoint"]);

/**
 * A split plus the identity directory its VMM reaches the sub-hosts with; a restore adds which host
 * holds each fragment's pages (0: main, k: the k-th sub-host).
 */
export type SplitRequest = SplitSpec & { identityDir: string; holders?: number[] };

/** The zones of the hosts `r` knows by address: its peers' and this host's own. */
function zonesOf(r: CheckpointRequest): Record<string, string> {
  const zones: Record<string, string> = {};
  for (const p of r.peers ?? []) if (p.zone !== undefined) zones[p.addr] = p.zone;
  if (r.self && r.zone !== undefined) zones[r.self] = r.zone;
  return zones;
}

/** Paging state of one machine: split or not, and the operations that change it. */
export class SplitControl {
  /** The pager while the VM is split. */
  pager?: RemotePager;
  private busy = false;

  constructor(private readonly m: Machine, private readonly tracker: DirtyTracker) {
    // The pager must let go of guest memory before KVM is torn down (see Vm.onClose).
    m.vm.onClose(() => this.pager?.stop(true));
  }

  private options(split: SplitRequest): PagerOptions {
    const refusal = splitRefusal(this.m.spec);
    if (refusal) throw new RpcError("bad-request", refusal);
    return {
      name: this.m.spec.name,
      mem: this.m.vm.memory,
      vm: this.m.vm,
      tracker: this.tracker,
      split,
      identity: loadIdentity(split.identityDir),
      pinnedPages: pinnedPages(this.m.spec),
    };
  }

  /**
   * Splits a restored VM before its vCPUs run: `holder` gives each page's host (0: main); with
   * `lazy`, main's own pages are installed from that checkpoint on demand.
   */
  async adopt(split: SplitRequest, holder: Uint8Array, lazy?: OpenCheckpoint): Promise<void> {
    this.pager = await RemotePager.adopt(this.options(split), holder, lazy);
  }

  /** Splits the VM before its vCPUs first run. */
  async boot(split: SplitRequest): Promise<void> {
    this.pager = await RemotePager.start(this.options(split));
  }

  /**
   * Takes a checkpoint (`local` is the one-host one). A split VM is saved in parallel on all of its
   * hosts; with `traditional` (stop mode) the old way instead: paused, every page pulled to main
   * through remote paging, then saved as one host would.
   */
  async checkpoint(
    r: CheckpointRequest,
    opts: CheckpointOptions,
    local: () => Promise<CheckpointReport>,
  ): Promise<CheckpointReport | SplitCheckpointReport> {
    const name = this.m.spec.name;
    const pager = this.pager;
    if (!pager) {
      if (r.traditional) {
        throw new Error(`--traditional is for split VMs; ${name} runs on one host`);
      }
      return await local();
    }
    if (this.busy) throw new RpcError("busy", `${name}: another paging operation is under way`);
    const host = r.host ?? "main";
    // A merge still under way owns the store's next generation.
    await this.merging;
    if (!r.traditional) {
      this.busy = true;
      try {
        const rep = await takeSplitCheckpoint(this.m, this.tracker, pager, {
          ...opts,
          host,
          // Two copies by default: a split VM always spans two hosts or more.
          replicas: r.replicas ?? (r.self ? 2 : 1),
          self: r.self,
          zones: zonesOf(r),
        });
        // Only once it committed everywhere: a failed checkpoint removes nothing.
        const retention = r.keep === undefined
          ? undefined
          : await retainOnHosts(opts.dir, name, host, r.keep, pager.subLinks());
        this.mergeLater(join(opts.dir, generationName(rep.generation)), host, pager, r.keep);
        return retention ? { ...rep, retention } : rep;
      } finally {
        this.busy = false;
      }
    }
    if (r.mode !== "stop") throw new Error("--traditional saves in stop mode only (--mode stop)");
    this.busy = true;
    const t0 = performance.now();
    await this.m.vm.pause();
    try {
      const before = pager.stats().pageIns;
      await pager.pullToMain();
      const pulled = pager.stats().pageIns - before;
      const rep = await local();
      // The VM was paused all along: pulling every page to main is part of the downtime.
      const downtimeMs = performance.now() - t0;
      return {
        ...rep,
        stats: { ...rep.stats, downtimeMs },
        pagesSaved: { [host]: this.m.vm.memory.pages },
        pagesSentToSave: pulled,
        pagesMovedMeanwhile: pulled,
      };
    } finally {
      pager.releaseMain();
      this.m.vm.resume();
      this.busy = false;
    }
  }

  private merging?: Promise<void>;

  /**
   * Starts merging the chain ending at `dir` in the background once it is long enough; once the
   * merged generation is committed everywhere, what it squashed goes, unless `keep` keeps it.
   */
  private mergeLater(dir: string, host: string, pager: RemotePager, keep?: number) {
    const m = readManifest(dir);
    if (chainLength(m) < MERGE_AFTER) return;
    this.merging = mergeSplitChain(dir, m, host, pager.subLinks()).then(
      () =>
        retainOnHosts(dirname(dir), this.m.spec.name, host, keep, pager.subLinks()).then(
          () => {},
          (e) =>
            log.warn("removing what the merge of {dir} squashed failed: {error}", {
              dir,
              error: (e as Error).message,
            }),
        ),
      (e) =>
        log.warn("merging the chain of {dir} failed (it stays as it was): {error}", {
          dir,
          error: (e as Error).message,
        }),
    );
  }

  /** `info` fields: paging counters, and the pause paging holds, if any. */
  info(): Record<string, unknown> {
    const p = this.pager;
    if (!p) return {};
    return {
      paging: p.stats(),
      ...(p.blocked ? { state: "paused", pausedReason: p.blocked } : {}),
    };
  }

  private async exclusive<T>(what: string, fn: () => Promise<T>): Promise<T> {
    if (this.busy) {
      throw new RpcError("busy", `${this.m.spec.name}: another paging operation is under way`);
    }
    if (this.m.vm.isStopped) throw new Error(`${this.m.spec.name} has stopped`);
    this.busy = true;
    try {
      return await fn();
    } catch (e) {
      // The caller is told what failed, and an RPC error keeps its code across the control socket.
      const message = `${what} ${this.m.spec.name}: ${(e as Error).message}`;
      throw e instanceof RpcError ? new RpcError(e.code, message) : new Error(message);
    } finally {
      this.busy = false;
    }
  }

  /** Control handlers: paging.check, split, move-sub, gather. */
  handlers(): Record<string, ExtraHandler> {
    return {
      "paging.check": () =>
        this.exclusive("check", () => {
          if (!this.pager) throw new Error("it is not split");
          return this.pager.check();
        }),
      split: (req) =>
        this.exclusive("split", async () => {
          if (this.pager) throw new Error("it is already split; gather it first");
          const r = req as unknown as SplitRequest;
          const { pager, report } = await RemotePager.migrate(this.options(r));
          this.pager = pager;
          return report;
        }),
      "move-sub": (req) =>
        this.exclusive("move a sub-host of", () => {
          if (!this.pager) throw new Error("it is not split");
          const { from, to } = req as { from?: unknown; to?: unknown };
          if (typeof from !== "string" || typeof to !== "string") {
            throw new RpcError("bad-request", "move-sub needs from and to (HOST:PORT)");
          }
          return this.pager.moveSub(from, to);
        }),
      gather: () =>
        this.exclusive("gather", async () => {
          if (!this.pager) throw new Error("it is not split");
          const r = await this.pager.gather();
          this.pager = undefined;
          return r;
        }),
    };
  }
}
