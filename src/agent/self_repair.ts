/**
 * An agent keeping its own fragment copies whole (issue 15 item 3): a copy the manifest here says
 * this host holds that is missing, or that a read found damaged (and set aside), is pulled again
 * from another holder, agent to agent. A holder pushes only to an agent the manifest names as
 * holding the file, and only to that agent's own address there (`ckpt.pull`, docs/SECURITY.md).
 */
import { dirname, join } from "node:path";
import { existsSync } from "node:fs";
import { getLogger } from "@logtape/logtape";
import { type Manifest, MANIFEST_FILE, readManifest } from "../ckpt/manifest.ts";
import { CheckpointStore, resolveCheckpoint } from "../ckpt/store.ts";
import type { RpcClient } from "../net/quic.ts";
import type { RpcContext, RpcHandler } from "../rpc/dispatcher.ts";
import { RpcError } from "../rpc/errors.ts";
import { VmExistsError } from "../vmm/runner.ts";
import { type ScrubCounters, setAsideDamaged } from "./scrub.ts";
import type { ScrubbedFile } from "../ckpt/scrub.ts";
import { pushStoreFile } from "./store_transfer.ts";
import { fragmentEntry, holderHandlers, wholeHere } from "./holder_rules.ts";
import { addressOf, holderName } from "../ckpt/holders.ts";
import { safeReadDir } from "./paths.ts";
import { scrubGenerationOffLoop } from "./verify.ts";

const log = getLogger(["dcres", "agent", "repair"]);

/** Age of a generation here before its copies elsewhere are checked (its commit is over by then). */
const SETTLED_MS = 60_000;

/** A copy this agent could not get back, and why. */
export class RepairError extends Error {
  constructor(store: string, file: string, why: string) {
    super(`${store}/${file}: no holder pushed a whole copy (${why}); run 'dcres ckpt repair'`);
    this.name = "RepairError";
  }
}

/** Pulls lost and damaged copies of this agent's fragments from the other holders. */
export class SelfRepair {
  readonly #root: string;
  readonly #me: string;
  readonly #connect: (addr: string) => Promise<RpcClient>;
  readonly #counters: ScrubCounters;
  readonly #pulling = new Map<string, Promise<string>>();

  /** Over checkpoint root `root` of the agent named `me`, dialing peers through `connect`. */
  constructor(
    root: string,
    me: string,
    connect: (addr: string) => Promise<RpcClient>,
    counters: ScrubCounters,
  ) {
    this.#root = root;
    this.#me = me;
    this.#connect = connect;
    this.#counters = counters;
  }

  /**
   * Gets a whole copy of fragment `file` of `store` pushed here by another holder and checks it;
   * resolves with the holder it came from. One pull per file at a time.
   */
  pull(store: string, file: string): Promise<string> {
    const key = `${store}/${file}`;
    const running = this.#pulling.get(key);
    if (running) return running;
    const p = this.#pull(store, file).finally(() => this.#pulling.delete(key));
    this.#pulling.set(key, p);
    return p;
  }

  async #pull(store: string, file: string): Promise<string> {
    const entry = fragmentEntry(this.#root, store, file);
    if (!entry || !entry.holders.includes(this.#me)) {
      throw new RepairError(store, file, `the manifest here does not name ${this.#me} a holder`);
    }
    const me = addressOf(entry.m, this.#me);
    if (!me) throw new RepairError(store, file, "the manifest records no address of this host");
    const tried: string[] = [];
    for (const h of entry.holders.filter((h) => h !== this.#me)) {
      const from = addressOf(entry.m, h);
      if (!from) {
        tried.push(`${h}: address unknown`);
        continue;
      }
      const path = join(this.#root, store, file);
      try {
        const part = existsSync(`${path}.part`) ? Deno.lstatSync(`${path}.part`).size : 0;
        const client = await this.#connect(from);
        try {
          await client.call("ckpt.pull", { store, file, to: me, offset: part }, {
            deadlineMs: 3_600_000,
          });
        } finally {
          await client.close();
        }
        const rows = await scrubGenerationOffLoop(dirname(path), file);
        const bad = setAsideDamaged(this.#root, rows, this.#counters);
        // The copy was counted repaired as it arrived (`ckpt.receive`, as for a `ckpt repair`).
        if (bad.length) throw new Error(`its copy is damaged too: ${bad[0].error}`);
        log.info("copy {file} of {store} pulled again from {from}", { file, store, from: h });
        return h;
      } catch (e) {
        tried.push(`${h}: ${(e as Error).message}`);
      }
    }
    throw new RepairError(store, file, tried.join("; ") || "it has no other holder");
  }

  /**
   * Each fragment the committed manifests here say this host holds, with its manifest; with
   * `settledMs`, only of generations committed here at least that long ago.
   */
  *#held(
    settledMs = 0,
  ): Generator<{ store: string; m: Manifest; f: Manifest["fragments"][number] }> {
    for (const s of safeReadDir(this.#root)) {
      if (!s.isDirectory) continue;
      for (const g of new CheckpointStore(join(this.#root, s.name)).generations()) {
        if (!g.committed) continue;
        let m: Manifest;
        try {
          const at = Deno.statSync(join(g.dir, MANIFEST_FILE)).mtime?.getTime() ?? 0;
          if (Date.now() - at < settledMs) continue;
          m = readManifest(g.dir);
        } catch {
          continue; // a scrub reports a damaged manifest
        }
        for (const f of m.fragments) {
          if (f.generation !== m.generation) continue;
          if ([f.host, ...(f.copies ?? [])].includes(this.#me)) yield { store: s.name, m, f };
        }
      }
    }
  }

  /** Fragment copies the manifests here say this host holds that are missing. */
  missing(): Array<{ store: string; file: string }> {
    return [...this.#held()].filter(({ store, f }) => !existsSync(join(this.#root, store, f.path)))
      .map(({ store, f }) => ({ store, file: f.path }));
  }

  /**
   * Asks every other holder of a fragment held whole here whether it still has its copy, and
   * pushes back each one it lost (a host whose disk was replaced), then the generation's manifest
   * where that is lost too. Returns the copies pushed; a holder that does not answer is passed over.
   */
  async pushLost(): Promise<Array<{ store: string; file: string; to: string }>> {
    // By holder address and store: the files it should have, and where they are here.
    const ask = new Map<string, Map<string, Set<string>>>();
    // A generation just committed here may still be committing on the others: left alone a while.
    for (const { store, m, f } of this.#held(SETTLED_MS)) {
      if (!wholeHere(join(this.#root, store, f.path), f.bytes)) continue;
      for (const h of [f.host, ...(f.copies ?? [])]) {
        const a = h === this.#me ? undefined : addressOf(m, h);
        if (!a) continue;
        const stores = ask.get(a) ?? new Map<string, Set<string>>();
        const files = stores.get(store) ?? new Set<string>();
        files.add(f.path).add(`${dirname(f.path)}/MANIFEST`);
        ask.set(a, stores.set(store, files));
      }
    }
    const pushed: Array<{ store: string; file: string; to: string }> = [];
    for (const [to, stores] of ask) {
      for (const [store, files] of stores) {
        try {
          const client = await this.#connect(to);
          let r: { missing: string[]; partial: Record<string, number> };
          try {
            r = await client.call("ckpt.have", { store, files: [...files] });
          } finally {
            await client.close();
          }
          // Fragments first, manifests last: a generation there is complete before it commits.
          const order = r.missing.sort((a, b) =>
            Number(a.endsWith("MANIFEST")) - Number(b.endsWith("MANIFEST"))
          );
          for (const file of order) {
            await pushStoreFile(this.#connect, join(this.#root, store, file), {
              store,
              file,
              to,
              offset: r.partial[file] ?? 0,
              repair: !file.endsWith("MANIFEST"),
            });
            pushed.push({ store, file, to });
            log.info("pushed lost copy {file} of {store} back to {to}", { file, store, to });
          }
        } catch (e) {
          log.warn("could not check or restore {store} copies on {to}: {error}", {
            store,
            to,
            error: (e as Error).message,
          });
        }
      }
    }
    return pushed;
  }

  /**
   * Checks the fragments generation `dir` uses here after a read of them failed: sets each
   * damaged one that another host holds aside and pulls it again. Resolves with the files
   * replaced (none: the failure was not a damaged copy here); rejects when one could not be.
   */
  async heal(dir: string): Promise<string[]> {
    const rows = await scrubGenerationOffLoop(dir);
    const bad = setAsideDamaged(this.#root, rows, this.#counters, (r) => this.replaceable(r));
    for (const b of bad) {
      log.warn("damaged copy {store}/{file} set aside: {error}", { ...b });
      await this.pull(b.store, b.file);
    }
    return bad.map((b) => `${b.store}/${b.file}`);
  }

  /**
   * True when the manifest here names another host holding `r`'s file: a damaged copy no other
   * host holds stays in place, since set aside, what is left of it would be lost.
   */
  replaceable(r: ScrubbedFile): boolean {
    try {
      const e = fragmentEntry(this.#root, r.store, r.file);
      // Another holder only if the manifest says who it is and where: a one-host manifest calls
      // its own host "main", and a copy nobody can be asked for is no replacement.
      return !!e && e.holders.some((h) => {
        const real = holderName(e.m, h);
        return real !== undefined && real !== this.#me && addressOf(e.m, h) !== undefined;
      });
    } catch {
      return false;
    }
  }
}

/** How `healing` treats one method: the generation a call reads, and whether to try it again. */
interface HealingRule {
  /** The generation directory a call with `args` reads. */
  gen: (args: Record<string, unknown>, ctx: RpcContext) => string;
  /** False for a call whose first attempt may have changed other hosts (a lazy split restore). */
  again?: (args: Record<string, unknown>) => boolean;
}

/**
 * `handlers` whose methods in `rules` are tried once more after a failure that a damaged copy here
 * caused, once that copy is replaced (or, when `again` says no, fail naming the copy replaced).
 */
function healing(
  handlers: Record<string, RpcHandler>,
  repair: SelfRepair,
  rules: Record<string, HealingRule>,
): Record<string, RpcHandler> {
  const out = { ...handlers };
  for (const [method, rule] of Object.entries(rules)) {
    const h = handlers[method];
    out[method] = async (args, ctx) => {
      try {
        return await h(args, ctx);
      } catch (e) {
        // Only a read of the checkpoint can have met a damaged copy: no scrub for a refusal.
        if (e instanceof RpcError && e.code !== "failed" || e instanceof VmExistsError) throw e;
        let healed: string[];
        try {
          healed = await repair.heal(resolveCheckpoint(rule.gen(args, ctx)).dir);
        } catch (why) {
          if (!(why instanceof RepairError)) throw e;
          // Set aside but not replaced here: a caller that fetches whole copies again may retry.
          throw new RpcError("damaged-copy", `${(e as Error).message}; ${why.message}`);
        }
        if (!healed.length) throw e;
        if (rule.again?.(args) === false) {
          throw new RpcError(
            "damaged-copy",
            `${(e as Error).message}; the damaged copy ${
              healed.join(", ")
            } was replaced: try again`,
          );
        }
        const r = await h(args, ctx);
        return r && typeof r === "object" ? { ...r, replacedDamaged: healed } : r;
      }
    };
  }
  return out;
}

/**
 * The agent's `handlers` with a holder's `ckpt.pull` and agents' `ckpt.have` (over root `root`,
 * pushing through `connect`; `holder_rules.ts`), and
 * restores, verifies and page loads that meet a damaged copy here healed by `repair`; `generation`
 * resolves a call's checkpoint argument as the agent does.
 */
export function withSelfRepair(
  handlers: Record<string, RpcHandler>,
  repair: SelfRepair,
  root: string,
  connect: (addr: string) => Promise<RpcClient>,
  generation: (arg: unknown, role: RpcContext["role"], field?: string) => string,
): Record<string, RpcHandler> {
  return healing({ ...handlers, ...holderHandlers(root, connect, handlers["ckpt.have"]) }, repair, {
    // A lazy split restore's first try may have moved pages on its sub-hosts: the CLI reloads them.
    restore: { gen: (a, ctx) => generation(a.path, ctx.role), again: (a) => !(a.lazy && a.split) },
    "ckpt.verify": { gen: (a, ctx) => generation(a.path, ctx.role) },
    "pages.load": { gen: (a, ctx) => generation(a.ckpt, ctx.role, "ckpt") },
  });
}
