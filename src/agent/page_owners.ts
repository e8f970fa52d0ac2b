/**
 * Which host each split VM's pages on this sub-host belong to: the main host that first opened
 * them. Page traffic about a VM (its channel, saves, drops) is accepted only from that host, so a
 * third member of the cluster cannot read or drop another VM's pages. The binding is kept beside the
 * page store (`NAME.main`), so it outlives an agent restart; loading pages for a restore (an
 * operator's act) and dropping them end it, and the next main host to open them takes it.
 */
import { join } from "node:path";
import { writeFileAtomic } from "../ffi/atomic_file.ts";
import type { Caller, RpcHandler } from "../rpc/dispatcher.ts";
import { RpcError } from "../rpc/errors.ts";

/** The main host of each VM whose pages this agent holds. */
export class PageOwners {
  readonly #dir: string;
  readonly #mains = new Map<string, string>();

  /** Bindings live in `dir` (the page store's directory); `vm` names are checked by the caller. */
  constructor(dir: string) {
    this.#dir = dir;
  }

  /**
   * Binds `vm` to `caller` if it has no main host yet; refuses a caller that is not its main host.
   * Root on this host (the local socket) may act for any VM.
   */
  claim(method: string, vm: string, caller: Caller): void {
    if (caller.role === "root") return;
    const main = this.mainOf(vm);
    if (main === undefined) {
      this.#write(vm, caller.peer);
      return;
    }
    if (main !== caller.peer) {
      throw new RpcError(
        "permission-denied",
        `${method}: the pages of VM ${vm} here belong to its main host ${main}; ${caller.peer} may not touch them`,
      );
    }
  }

  /** Ends `vm`'s binding: its pages were dropped or are being replaced for a restore. */
  release(vm: string): void {
    this.#mains.delete(vm);
    try {
      Deno.removeSync(this.#path(vm));
    } catch (e) {
      if (!(e instanceof Deno.errors.NotFound)) throw e;
    }
  }

  /** The main host `vm` is bound to, if any. */
  mainOf(vm: string): string | undefined {
    const known = this.#mains.get(vm);
    if (known !== undefined) return known;
    try {
      const main = Deno.readTextFileSync(this.#path(vm)).trim();
      if (main !== "") this.#mains.set(vm, main);
      return main || undefined;
    } catch (e) {
      if (e instanceof Deno.errors.NotFound) return undefined;
      throw e;
    }
  }

  #write(vm: string, main: string): void {
    Deno.mkdirSync(this.#dir, { recursive: true, mode: 0o700 });
    writeFileAtomic(this.#path(vm), new TextEncoder().encode(`${main}\n`));
    this.#mains.set(vm, main);
  }

  #path(vm: string): string {
    return join(this.#dir, `${vm}.main`);
  }
}

/**
 * `handlers` where an agent calling one of `methods` about store S (a split VM's checkpoint files
 * here) must be the main host of VM S, as its pages here say: a split VM's main host merges its
 * chain on its sub-hosts, and no other agent may write or remove that VM's generations. People
 * (operators, the coordinator) and root are not bound. Where this host holds none of S's pages
 * there is no main host to check against, and the call goes through.
 */
export function mergesFromMain(
  owners: PageOwners,
  handlers: Record<string, RpcHandler>,
  methods: readonly string[],
): Record<string, RpcHandler> {
  const out = { ...handlers };
  for (const method of methods) {
    const h = handlers[method];
    if (!h) continue;
    out[method] = (args, ctx) => {
      const main = typeof args.store === "string" ? owners.mainOf(args.store) : undefined;
      if (ctx.role === "agent" && main !== undefined && main !== ctx.peer) {
        throw new RpcError(
          "permission-denied",
          `${method}: the checkpoint of VM ${args.store} here is its main host ${main}'s; ${ctx.peer} may not change it`,
        );
      }
      return h(args, ctx);
    };
  }
  return out;
}
