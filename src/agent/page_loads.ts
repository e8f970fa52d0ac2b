/**
 * A sub-host's part of a split restore: the pages of the checkpoint's fragments assigned to this
 * host go into a fresh page store of the VM, which main then pages from. Eagerly, every page is read
 * and checked before the call answers; lazily, the store answers for them at once and reads each
 * from its fragment on first request, while a background pass brings in the rest.
 */
import { isAbsolute, relative } from "node:path";
import { getLogger } from "@logtape/logtape";
import * as v from "valibot";
import * as libc from "../ffi/libc.ts";
import { OpenCheckpoint } from "../ckpt/open_checkpoint.ts";
import type { RpcHandler } from "../rpc/dispatcher.ts";
import { RpcError } from "../rpc/errors.ts";
import type { CallerRole } from "../rpc/roles.ts";
import {
  type PageSource,
  PageSourceError,
  type PageStores,
  type VmPageStore,
} from "../paging/page_store.ts";
import { PAGE_SIZE } from "../accel/accel.ts";
import { nextTurn, sleep } from "../rpc/deadline.ts";

const log = getLogger(["dcres", "agent", "pages"]);

const BATCH = 1024;
/**
 * The background fill starts this long after a lazy load answers: the restored VMM is starting
 * then (on a small host the fill would take the CPU it starts with), and main asks for what it
 * needs first meanwhile.
 */
const FILL_DELAY_MS = 1_500;
/** The first wait before a fill batch that failed is tried again; it doubles up to the next. */
const FILL_RETRY_MS = 10_000;
const MAX_FILL_RETRY_MS = 600_000;

/**
 * Replaces the damaged copies a failed read of generation `dir` met; resolves with the files
 * replaced (none: the failure was not a damaged copy here).
 */
export type Heal = (dir: string) => Promise<string[]>;

/** Pages of some fragments of an opened checkpoint, reopened after its damaged copies are replaced. */
class CheckpointPages implements PageSource {
  #ck: OpenCheckpoint;
  readonly #frags: ReadonlySet<number>;
  #healing?: Promise<boolean>;
  #closed = false;

  constructor(ck: OpenCheckpoint, frags: ReadonlySet<number>) {
    this.#ck = ck;
    this.#frags = frags;
  }

  read(gfns: number[], into: Uint8Array<ArrayBuffer>): void {
    const base = libc.ptrValue(Deno.UnsafePointer.of(into));
    this.#ck.loadTo(gfns, into, base, gfns.map((_, k) => k * PAGE_SIZE));
  }

  /**
   * Has `heal` replace the damaged copies here and reopens the checkpoint; resolves false when
   * nothing was replaced (the pages cannot come from here), or the load ended meanwhile. One
   * healing at a time.
   */
  heal(heal: Heal): Promise<boolean> {
    this.#healing ??= (async () => {
      try {
        const dir = this.#ck.dir, id = this.#ck.manifest.id;
        if (!(await heal(dir)).length || this.#closed) return false;
        const next = OpenCheckpoint.open(dir, this.#frags);
        if (this.#closed || next.manifest.id !== id) {
          next.close();
          return false;
        }
        this.#ck.close();
        this.#ck = next;
        return true;
      } finally {
        this.#healing = undefined;
      }
    })();
    return this.#healing;
  }

  close(): void {
    this.#closed = true;
    this.#ck.close();
  }
}

/**
 * Generation directory `dir` as a store path under checkpoint root `root` (both as the file system
 * resolves them: the root may be reached through a symbolic link), or undefined when it is not one.
 */
function underRoot(root: string, dir: string): string | undefined {
  let rel: string;
  try {
    rel = relative(Deno.realPathSync(root), Deno.realPathSync(dir));
  } catch {
    return undefined;
  }
  return rel && !rel.startsWith("..") && !isAbsolute(rel) ? rel : undefined;
}

/** Resolves a checkpoint argument as the agent does, to its generation directory. */
export type ResolveCheckpoint = (arg: unknown, role: CallerRole, field?: string) => string;

/** What a lazy load records of its source: the checkpoint (under the root), its id, the fragments. */
const LoadSource = v.object({
  ckpt: v.pipe(v.string(), v.maxLength(4096)),
  id: v.pipe(v.string(), v.regex(/^[0-9a-f]{32}$/)),
  fragments: v.pipe(v.array(v.pipe(v.number(), v.integer(), v.minValue(0))), v.maxLength(4096)),
});

/** The lazy loads under way on this host, and the page loads' RPC handler. */
export class PageLoads {
  readonly #stores: PageStores;
  readonly #root: string;
  readonly #resolve: ResolveCheckpoint;
  readonly #heal?: Heal;
  readonly #sources = new WeakMap<VmPageStore, CheckpointPages>();
  /** Settles when the fill batch under way (of any load here) and its pause are over. */
  #turn: Promise<void> = Promise.resolve();

  /**
   * Over `stores`, with checkpoints under `root` found through `resolve`; `heal` replaces damaged
   * checkpoint copies a lazy load meets.
   */
  constructor(stores: PageStores, root: string, resolve: ResolveCheckpoint, heal?: Heal) {
    this.#stores = stores;
    this.#root = root;
    this.#resolve = resolve;
    this.#heal = heal;
  }

  /**
   * Picks up the lazy loads a stopped agent left unfinished: each reads its pages from its
   * checkpoint again, on request and in the background. Returns the VMs whose load cannot go on
   * (their pages still in the checkpoint fail by name when main asks), with why.
   */
  resumeUnfinished(): Array<{ vm: string; error: string }> {
    const failed: Array<{ vm: string; error: string }> = [];
    for (const u of this.#stores.unfinishedLoads()) {
      try {
        if ("error" in u) throw new Error(u.error);
        const store = this.#stores.store(u.vm, u.pages);
        const describe = store.unfinishedLoad;
        if (!describe) continue;
        const src = v.parse(LoadSource, JSON.parse(new TextDecoder().decode(describe)));
        const only = new Set(src.fragments);
        // As a peer's argument: a store path under the checkpoint root, never an absolute path.
        const ck = OpenCheckpoint.open(this.#resolve(src.ckpt, "agent", "ckpt"), only);
        if (ck.manifest.id !== src.id) {
          ck.close();
          throw new Error(`${src.ckpt} is checkpoint ${ck.manifest.id} now, not ${src.id}`);
        }
        const source = new CheckpointPages(ck, only);
        store.replaceSource(source);
        this.#sources.set(store, source);
        log.info("{vm}: lazy load picked up again, {left} pages still in {ckpt}", {
          vm: u.vm,
          left: store.pendingPages,
          ckpt: src.ckpt,
        });
        void this.#fillInBackground(store);
      } catch (e) {
        failed.push({ vm: u.vm, error: (e as Error).message });
      }
    }
    return failed;
  }

  /**
   * Brings those of `gfns` still in the checkpoint into `store`; a damaged copy met on the way is
   * replaced and read again once. Throws PageSourceError when the pages cannot be had.
   */
  async ready(store: VmPageStore, gfns: ArrayLike<number>): Promise<void> {
    try {
      store.fill(gfns);
    } catch (e) {
      if (!(e instanceof PageSourceError) || !(await this.#healed(store, e))) throw e;
      store.fill(gfns);
    }
  }

  async #healed(store: VmPageStore, e: PageSourceError): Promise<boolean> {
    const source = this.#sources.get(store);
    if (!source || !this.#heal) return false;
    log.warn("{vm}: {error}; replacing the damaged copy", { vm: store.vm, error: e.message });
    try {
      return await source.heal(this.#heal);
    } catch (why) {
      log.error("{vm}: could not replace the damaged copy: {error}", {
        vm: store.vm,
        error: (why as Error).message,
      });
      return false;
    }
  }

  /**
   * Reads every page still in the checkpoint into `store`, a batch at a time, after a while; one
   * batch at a time on this host, whatever the loads. A batch that fails (after a heal) is tried
   * again later, the wait doubling: main's requests still get their pages meanwhile, if they can.
   */
  async #fillInBackground(store: VmPageStore): Promise<void> {
    await sleep(FILL_DELAY_MS);
    const t0 = performance.now(), total = store.pendingPages;
    let wait = FILL_RETRY_MS;
    while (!store.closed && store.pendingPages) {
      const turn = this.#turn;
      let done!: () => void;
      this.#turn = new Promise((r) => done = r);
      await turn;
      let failed: Error | undefined;
      try {
        if (store.closed) break;
        const tb = performance.now();
        await this.ready(store, store.nextPending(BATCH));
        wait = FILL_RETRY_MS;
        // At most half of a CPU: main's page requests, the guest and the agent's other work first.
        await sleep(performance.now() - tb);
      } catch (e) {
        failed = e as Error;
      } finally {
        done();
      }
      if (!failed || store.closed) continue;
      log.error(
        "{vm}: {left} pages still in the checkpoint; the fill tries again in {s} s: {error}",
        {
          vm: store.vm,
          left: store.pendingPages,
          s: wait / 1000,
          error: failed.message,
        },
      );
      await sleep(wait);
      wait = Math.min(2 * wait, MAX_FILL_RETRY_MS);
    }
    if (store.closed) return;
    log.info("{vm}: lazy load of {pages} pages done in {ms} ms", {
      vm: store.vm,
      pages: total,
      ms: Math.round(performance.now() - t0),
    });
  }

  /**
   * `pages.load`: fill the store of `vm` with the pages of fragments `fragments` of checkpoint
   * `ckpt`; with `lazy`, answer once the pages are registered and bring them in afterwards.
   */
  handlers(
    vmArgs: (a: Record<string, unknown>) => { vm: string; pages: number },
  ): Record<string, RpcHandler> {
    const stores = this.#stores, resolve = this.#resolve;
    return {
      "pages.load": async (args, ctx) => {
        const { vm, pages } = vmArgs(args);
        const frags = args.fragments;
        if (!Array.isArray(frags) || !frags.every((f) => Number.isSafeInteger(f) && f >= 0)) {
          throw new RpcError("bad-request", "fragments must be fragment indices");
        }
        const t0 = performance.now();
        const only = new Set(frags as number[]);
        using ck = new DisposableStack();
        const opened = ck.adopt(
          OpenCheckpoint.open(resolve(args.ckpt, ctx.role, "ckpt"), only),
          (c) => c.close(),
        );
        if (opened.manifest.machine.spec.memSize !== pages * PAGE_SIZE) {
          throw new RpcError(
            "bad-request",
            `checkpoint ${opened.manifest.id} is not of a ${pages}-page VM`,
          );
        }
        const gfns = opened.pagesOf(only);
        stores.drop(vm);
        stores.reserve(gfns.length);
        const store = stores.store(vm, pages, true);
        // Lazily only what an agent started again can find (a store path under its root), and only
        // fragments another host holds a copy of: a damaged page met later can be had from there.
        // A fragment of one copy is read whole first, so a damaged one refuses the restore up front.
        const ckpt = underRoot(this.#root, opened.dir);
        const copied = [...only].every((k) => !!opened.manifest.fragments[k]?.copies?.length);
        if (args.lazy === true && ckpt !== undefined && copied) {
          const source = new CheckpointPages(opened, only);
          const describe: v.InferOutput<typeof LoadSource> = {
            ckpt,
            id: opened.manifest.id,
            fragments: [...only],
          };
          store.backWith(gfns, source, new TextEncoder().encode(JSON.stringify(describe)));
          ck.move();
          this.#sources.set(store, source);
          void this.#fillInBackground(store);
          return { heldPages: store.heldPages, ms: performance.now() - t0, lazy: true };
        }
        const buf = new Uint8Array(BATCH * PAGE_SIZE);
        const base = libc.ptrValue(Deno.UnsafePointer.of(buf));
        for (let i = 0; i < gfns.length; i += BATCH) {
          const part = gfns.slice(i, i + BATCH);
          opened.loadTo(part, buf, base, part.map((_, k) => k * PAGE_SIZE));
          store.put(part, buf.subarray(0, part.length * PAGE_SIZE));
          ctx.progress({ done: i + part.length, total: gfns.length });
          // The agent's other work (page channels of running VMs) gets a turn between batches.
          await nextTurn();
        }
        return { heldPages: store.heldPages, ms: performance.now() - t0 };
      },
    };
  }
}
