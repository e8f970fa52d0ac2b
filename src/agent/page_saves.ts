/**
 * A sub-host agent's side of a split VM's parallel checkpoint: a fragment in this agent's store for
 * the VM (`DATA/ckpt/VM/gNNNNNN/HOST.frag`), written from the VM's page store on main's requests,
 * and the manifest main sends once every fragment is durable.
 */
import { join } from "node:path";
import * as libc from "../ffi/libc.ts";
import { FragmentWriter } from "../ckpt/fragment_writer.ts";
import { commitManifest, decodeManifest } from "../ckpt/manifest.ts";
import { removeGeneration } from "../ckpt/transaction.ts";
import { checkQuota } from "./upload_space.ts";
import { CheckpointStore, generationName } from "../ckpt/store.ts";
import type { RpcHandler } from "../rpc/dispatcher.ts";
import { RpcError } from "../rpc/errors.ts";
import { gather } from "../net/chunks.ts";
import { checkRuns, expandRuns } from "../memory/runs.ts";
import type { PageStores } from "../paging/page_store.ts";
import { type SaveSessionBase, SaveSessionError, SaveSessions } from "../paging/save_sessions.ts";
import { SubSaver } from "../paging/sub_saver.ts";
import { PAGE_SIZE } from "../accel/accel.ts";
import { teeSinks } from "../ckpt/fragment_sink.ts";
import { MAX_COPIES } from "../ckpt/manifest.ts";
import { isName } from "../codec/names.ts";
import { parseHostPort } from "../net/address.ts";
import type { RpcClient } from "../net/quic.ts";
import { ReplicaSink } from "../net/replica_sink.ts";
import type { ReplicaHost } from "../paging/split_replicas.ts";
import { fragmentBound } from "../ckpt/fragment_layout.ts";

/** One checkpoint under way of one VM on this host. */
interface SaveSession extends SaveSessionBase {
  dir: string;
  writer: FragmentWriter;
  saver: SubSaver;
  /** Pages that arrived (PUT) since the consistency point (undefined: not reached yet). */
  arrived?: Set<number>;
  /** Of the pages saved, those that had arrived since the point: they crossed to be saved. */
  received: number;
  /** Main sent the manifest: the generation exists here. */
  committed: boolean;
  /** Ends this session's hold on its generation directory. */
  release: () => void;
}

/** Gfns from [start, count] runs, all inside a VM of `pages` pages. */
function gfnsArg(runs: unknown, pages: number): number[] {
  return expandRuns(
    checkRuns(runs, pages, (why) => new RpcError("bad-request", `gfns: ${why}`)).runs,
  );
}

/** The hosts main asks this fragment to be copied to, checked: names, addresses, how many. */
function replicasArg(v: unknown): ReplicaHost[] {
  if (v === undefined) return [];
  if (!Array.isArray(v) || v.length > MAX_COPIES) {
    throw new RpcError("bad-request", `replicas: a list of at most ${MAX_COPIES} hosts`);
  }
  return v.map((r) => {
    const { host, addr } = (r ?? {}) as Record<string, unknown>;
    if (!isName("host", host) || typeof addr !== "string") {
      throw new RpcError("bad-request", "replicas: each is { host: NAME, addr: HOST:PORT }");
    }
    try {
      parseHostPort(addr);
    } catch (e) {
      throw new RpcError("bad-request", `replicas: ${(e as Error).message}`);
    }
    return { host, addr };
  });
}

/** A session's refusal as the RPC error the caller sees. */
function asRpcError(e: unknown): unknown {
  if (!(e instanceof SaveSessionError)) return e;
  return new RpcError(e.kind === "failed" ? "failed" : "bad-request", e.message);
}

/** Sessions by VM name; the page channel consults them before pages leave. */
export class PageSaves {
  private readonly sessions = new SaveSessions<SaveSession>();

  constructor(
    private readonly stores: PageStores,
    private readonly ckptRoot: string,
    private readonly connect: (addr: string) => Promise<RpcClient>,
    private readonly quotaBytes?: number,
  ) {}

  /** Rule 1: owed pages of `vm` are saved before they leave (GET, RELEASE). */
  async beforeLeaving(vm: string, gfns: ArrayLike<number>): Promise<void> {
    const s = this.sessions.current(vm);
    try {
      await s?.saver.beforeLeaving(gfns);
    } catch (e) {
      s!.failed ??= (e as Error).message;
    }
  }

  /** Pages of `vm` arrived (PUT). */
  arrived(vm: string, gfns: ArrayLike<number>): void {
    const s = this.sessions.current(vm);
    if (s?.arrived) { for (let i = 0; i < gfns.length; i++) s.arrived.add(gfns[i]); }
  }

  /** The checkpoint of `vm` under way, which must be checkpoint `id` (SaveSessions). */
  private session(vm: string, id: unknown): SaveSession {
    try {
      return this.sessions.get(vm, id);
    } catch (e) {
      throw asRpcError(e);
    }
  }

  /**
   * Ends the checkpoint session of `vm` an earlier life of the VM left here (its main host died
   * mid-checkpoint and never aborted it), as the VM's pages here start afresh or go. Kept, it held
   * its fragment open until the VM's next checkpoint here, and the fragment's space with it, even
   * once a merge's start had removed its uncommitted directory.
   */
  async endStale(vm: string): Promise<void> {
    await this.abort(vm, true);
  }

  /** Drops the session of `vm`; its generation too unless it was committed and `keepCommitted`. */
  private async abort(vm: string, keepCommitted: boolean, id?: string) {
    const s = id === undefined ? this.sessions.end(vm) : this.sessions.abort(vm, id);
    if (!s) return;
    s.release();
    if (s.committed && keepCommitted) return;
    if (!s.committed) await s.writer.abort();
    removeGeneration(s.dir);
  }

  /** RPC handlers: pages.save.begin|save|finish|commit|abort. */
  handlers(vmArgs: (a: Record<string, unknown>) => { vm: string; pages: number }): Record<
    string,
    RpcHandler
  > {
    return {
      "pages.save.begin": async (args) => {
        const { vm, pages } = vmArgs(args);
        const id = args.id, generation = args.generation;
        if (typeof id !== "string" || !/^[0-9a-f]{32}$/.test(id)) {
          throw new RpcError("bad-request", "id must be 32 hex digits");
        }
        if (!Number.isSafeInteger(generation) || (generation as number) < 1) {
          throw new RpcError("bad-request", "generation must be a positive integer");
        }
        try {
          this.sessions.mayBegin(id);
        } catch (e) {
          throw asRpcError(e);
        }
        await this.abort(vm, true);
        const store = this.stores.store(vm, pages);
        // Before anything is written: every page this host holds, saved once, must fit.
        checkQuota(
          this.ckptRoot,
          this.quotaBytes,
          `checkpoint of ${vm} on ${this.stores.host}`,
          store.heldPages * PAGE_SIZE,
        );
        const { dir, release } = new CheckpointStore(join(this.ckptRoot, vm)).beginAt(
          generation as number,
        );
        const idBytes = Uint8Array.from(id.match(/../g)!.map((h) => parseInt(h, 16)));
        const file = `${generationName(generation as number)}/${this.stores.host}.frag`;
        const copies = replicasArg(args.replicas).map((r) =>
          ReplicaSink.overConnection(this.connect, r.addr, {
            host: r.host,
            store: vm,
            file,
            maxBytes: fragmentBound(pages),
          })
        );
        let writer: FragmentWriter;
        try {
          writer = FragmentWriter.create(join(dir, `${this.stores.host}.frag`), {
            checkpointId: idBytes,
            generation: generation as number,
            compress: !!args.compress,
            sink: copies.length ? teeSinks(copies) : undefined,
          });
        } catch (e) {
          release();
          throw e;
        }
        const s: SaveSession = {
          id,
          dir,
          writer,
          received: 0,
          committed: false,
          release,
          saver: new SubSaver({
            holds: (g) => store.holds(g),
            write: async (gfns) => {
              const data = store.get(gfns);
              for (const g of gfns) if (s.arrived?.has(g)) s.received++;
              await writer.append(gfns, {
                bytes: data as Uint8Array<ArrayBuffer>,
                base: libc.ptrValue(Deno.UnsafePointer.of(data as Uint8Array<ArrayBuffer>)),
              }, gfns.map((_, i) => i * PAGE_SIZE));
              await writer.flush();
            },
          }),
        };
        this.sessions.set(vm, s);
        return { host: this.stores.host };
      },
      "pages.save.point": (args) => {
        const { vm } = vmArgs(args);
        this.session(vm, args.id).arrived = new Set();
        return Promise.resolve({});
      },
      "pages.save.owe": (args) => {
        const { vm, pages } = vmArgs(args);
        const s = this.session(vm, args.id);
        s.arrived = new Set();
        s.saver.owe(gfnsArg(args.gfns, pages));
        return Promise.resolve({ owed: s.saver.unsaved().length });
      },
      "pages.save": async (args) => {
        const { vm, pages } = vmArgs(args);
        const s = this.session(vm, args.id);
        const gfns = gfnsArg(args.gfns, pages);
        const before = s.received;
        const saved = await s.saver.save(gfns);
        const runs: Array<[number, number]> = [];
        for (const g of saved) {
          const last = runs[runs.length - 1];
          if (last && last[0] + last[1] === g) last[1]++;
          else runs.push([g, 1]);
        }
        return { saved: runs, received: s.received - before };
      },
      "pages.save.finish": async (args) => {
        const { vm } = vmArgs(args);
        const s = this.session(vm, args.id);
        const sum = await s.writer.finish();
        return {
          path: `${generationName(Number(/g(\d+)$/.exec(s.dir)![1]))}/${this.stores.host}.frag`,
          pages: sum.pages,
          zeroPages: sum.zeroPages,
          rewrites: sum.rewrites,
          dataBytes: sum.dataBytes,
          fileBytes: sum.fileBytes,
          footerCrc: sum.footerCrc,
        };
      },
      "pages.save.commit": async (args, ctx) => {
        const { vm } = vmArgs(args);
        const s = this.session(vm, args.id);
        const bytes = await gather(ctx.data);
        const m = decodeManifest(`${s.dir}/MANIFEST (from main)`, bytes);
        if (m.id !== s.id) {
          throw new RpcError("bad-request", `manifest is of checkpoint ${m.id}, not ${s.id}`);
        }
        commitManifest(s.dir, m);
        s.committed = true;
        s.release();
        return { committed: s.dir };
      },
      "pages.save.abort": async (args) => {
        const { vm } = vmArgs(args);
        if (typeof args.id !== "string") throw new RpcError("bad-request", "id must be given");
        await this.abort(vm, false, args.id);
        return { aborted: vm };
      },
    };
  }
}
