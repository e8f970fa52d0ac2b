/** The agent's page-store methods: what a split VM's main host calls on its sub-hosts. */
import type { RpcClient } from "../net/quic.ts";
import type { RpcHandler } from "../rpc/dispatcher.ts";
import { RpcError } from "../rpc/errors.ts";
import type { CallerRole } from "../rpc/roles.ts";
import { nameArg } from "./paths.ts";
import { PageStoreError, type PageStores } from "../paging/page_store.ts";
import { checkRuns, expandRuns } from "../memory/runs.ts";
import { PageSaves } from "./page_saves.ts";
import { PageLoads } from "./page_loads.ts";
import { PageOwners } from "./page_owners.ts";
import { decodePageRequest, encodePageReply, PageOp, type PageRequest } from "../paging/wire.ts";

function vmArgs(args: Record<string, unknown>): { vm: string; pages: number } {
  const vm = nameArg(args, "vm", "vm"), pages = args.pages;
  if (!Number.isSafeInteger(pages) || (pages as number) <= 0 || (pages as number) > 1 << 28) {
    throw new RpcError("bad-request", "pages must be the VM's page count");
  }
  return { vm, pages: pages as number };
}

async function serve(
  stores: PageStores,
  saves: PageSaves,
  loads: PageLoads,
  vm: string,
  pages: number,
  r: PageRequest,
): Promise<Uint8Array> {
  const store = stores.store(vm, pages);
  switch (r.op) {
    case PageOp.GET:
      await saves.beforeLeaving(vm, r.gfns);
      await loads.ready(store, r.gfns);
      // The store may have been dropped or loaded afresh while this request waited.
      if (store.closed) throw new PageStoreError(`${vm}: its pages here were replaced; ask again`);
      return store.get(r.gfns);
    case PageOp.PUT: {
      // A page still held here is replaced (main took it over as a zero page and cancelled its
      // release): one this host owes is saved first, or its contents of the point would be lost.
      await saves.beforeLeaving(vm, r.gfns);
      let fresh = 0;
      for (const g of r.gfns) if (!store.holds(g)) fresh++;
      stores.reserve(fresh);
      store.put(r.gfns, r.data!);
      saves.arrived(vm, r.gfns);
      return new Uint8Array(0);
    }
    case PageOp.RELEASE:
      await saves.beforeLeaving(vm, r.gfns);
      store.release(r.gfns);
      return new Uint8Array(0);
  }
}

/** What a page service reaches besides its stores. */
export interface PageServiceOptions {
  /** Which VM's main host each VM's pages answer to. */
  owners?: PageOwners;
  /** Dials another agent (fragment copies); by default none is reached. */
  connect?: (addr: string) => Promise<RpcClient>;
  /** Most bytes of checkpoints under the checkpoint root. */
  quotaBytes?: number;
  /** The lazy loads of this host (by default, a new set without healing). */
  loads?: PageLoads;
}

/**
 * RPC handlers over `stores`; `ckptRoot` holds the checkpoint stores sub-host fragments go to, and
 * `resolve` turns a checkpoint path or id into its generation directory.
 */
export function pageHandlers(
  stores: PageStores,
  ckptRoot: string,
  resolve: (arg: unknown, role: CallerRole, field?: string) => string,
  opts: PageServiceOptions = {},
): Record<string, RpcHandler> {
  return ownedByMain(
    opts.owners ?? new PageOwners(stores.dir),
    pageMethods(stores, ckptRoot, resolve, opts),
  );
}

/** The connector of a page service that reaches no other agent (copies of fragments are refused). */
function noPeers(addr: string): Promise<RpcClient> {
  return Promise.reject(new Error(`this service does not connect to other agents (${addr})`));
}

/**
 * `handlers` with every page method about a VM accepted only from that VM's main host (the first to
 * open its pages here). Loading a restore's pages and dropping them end the binding.
 */
function ownedByMain(
  owners: PageOwners,
  handlers: Record<string, RpcHandler>,
): Record<string, RpcHandler> {
  const out: Record<string, RpcHandler> = {};
  for (const [method, h] of Object.entries(handlers)) {
    out[method] = async (args, ctx) => {
      const { vm } = vmArgs({ ...args, pages: 1 });
      if (method === "pages.load") {
        owners.release(vm);
        return await h(args, ctx);
      }
      // The coordinator drops what a failed main host left (it restored the VM elsewhere).
      if (!(method === "pages.drop" && ctx.role === "coordinator")) owners.claim(method, vm, ctx);
      const result = await h(args, ctx);
      if (method === "pages.drop") owners.release(vm);
      return result;
    };
  }
  return out;
}

function pageMethods(
  stores: PageStores,
  ckptRoot: string,
  resolve: (arg: unknown, role: CallerRole, field?: string) => string,
  opts: PageServiceOptions,
): Record<string, RpcHandler> {
  const saves = new PageSaves(stores, ckptRoot, opts.connect ?? noPeers, opts.quotaBytes);
  const pageLoads = opts.loads ?? new PageLoads(stores, ckptRoot, resolve);
  const loads = pageLoads.handlers(vmArgs);
  return {
    ...saves.handlers(vmArgs),
    ...loads,
    // A restore's pages replace the store: a checkpoint session of the VM before is stale.
    "pages.load": async (args, ctx) => {
      await saves.endStale(vmArgs(args).vm);
      return await loads["pages.load"](args, ctx);
    },
    "pages.open": async (args) => {
      const { vm, pages } = vmArgs(args);
      const hold = args.hold === undefined ? undefined : checkRuns(
        args.hold,
        pages,
        (why) => new RpcError("bad-request", `hold: ${why}`),
      );
      // With `hold` the VM starts afresh here (not a reconnect, which keeps a checkpoint going).
      if (hold) await saves.endStale(vm);
      const store = stores.store(vm, pages, hold !== undefined);
      if (hold) {
        // Reserved before the runs become a list, so a refused request costs no memory.
        stores.reserve(hold.total);
        store.holdZero(expandRuns(hold.runs));
      }
      return { host: stores.host, heldPages: store.heldPages };
    },
    "pages.channel": async (args, ctx) => {
      const { vm, pages } = vmArgs(args);
      stores.store(vm, pages);
      let served = 0;
      for await (const b of ctx.data) {
        const r = decodePageRequest(b, pages);
        let reply: Uint8Array;
        try {
          reply = encodePageReply({
            op: r.op,
            seq: r.seq,
            data: await serve(stores, saves, pageLoads, vm, pages, r),
          });
        } catch (e) {
          if (!(e instanceof PageStoreError)) throw e;
          reply = encodePageReply({ op: r.op, seq: r.seq, error: e.message });
        }
        await ctx.send(reply);
        served++;
      }
      return { served };
    },
    "pages.held": (args) => {
      const { vm, pages } = vmArgs(args);
      const store = stores.store(vm, pages);
      return Promise.resolve({ heldPages: store.heldPages, bitmap: store.bitmap() });
    },
    "pages.drop": async (args) => {
      const { vm } = vmArgs({ ...args, pages: 1 });
      await saves.endStale(vm);
      stores.drop(vm);
      return { dropped: vm };
    },
  };
}
