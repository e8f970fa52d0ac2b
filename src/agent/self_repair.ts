/**
 * An agent keeping its own fragment copies whole (issue 15 item 3): a copy the manifest here says
 * this host holds that is missing, or that a read found damaged (and set aside), is pulled again
 * from another holder, agent to agent. A holder pushes only to an agent the manifest names as
 * holding the file, and only to that agent's own address there (`ckpt.pull`, docs/SECURITY.md).
 */
import { dirname, join } from "node:path";
import { existsSync } from "node:fs";
import { getLogger } from "@logtape/logtape";
import { type Manifest, readManifest } from "../ckpt/manifest.ts";
import { CheckpointStore, resolveCheckpoint } from "../ckpt/store.ts";
import type { RpcClient } from "../net/quic.ts";
import type { RpcContext, RpcHandler } from "../rpc/dispatcher.ts";
import { RpcError } from "../rpc/errors.ts";
import { VmExistsError } from "../vmm/runner.ts";
import { type ScrubCounters, setAsideDamaged } from "./scrub.ts";
import { inStore } from "./store_files.ts";
import { pushStoreFile } from "./store_transfer.ts";
import { safeReadDir } from "./paths.ts";
import { scrubGenerationOffLoop } from "./verify.ts";

const log = getLogger(["dcres", "agent", "repair"]);

/** The agent address the manifest `m` records for host `name` (main's is `split.mainAddr`). */
function addressOf(m: Manifest, name: string): string | undefined {
  const a = m.split?.hosts[name];
  return a === "main" ? m.split?.mainAddr : a;
}

/** Fragment `file` of the manifest of its own generation in `store`, and that manifest. */
function fragmentEntry(root: string, store: string, file: string) {
  const m = readManifest(join(root, store, dirname(file)));
  const f = m.fragments.find((x) => x.path === file && x.generation === m.generation);
  return f && { m, f, holders: [f.host, ...(f.copies ?? [])] };
}

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
        const rows = await scrubGenerationOffLoop(dirname(path));
        const bad = setAsideDamaged(
          this.#root,
          rows.filter((r) => r.file === file),
          this.#counters,
        );
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

  /** Fragment copies the manifests here say this host holds that are missing. */
  missing(): Array<{ store: string; file: string }> {
    const out: Array<{ store: string; file: string }> = [];
    for (const s of safeReadDir(this.#root)) {
      if (!s.isDirectory) continue;
      for (const g of new CheckpointStore(join(this.#root, s.name)).generations()) {
        if (!g.committed) continue;
        let m: Manifest;
        try {
          m = readManifest(g.dir);
        } catch {
          continue; // a scrub reports a damaged manifest
        }
        for (const f of m.fragments) {
          if (f.generation !== m.generation) continue;
          if (![f.host, ...(f.copies ?? [])].includes(this.#me)) continue;
          if (!existsSync(join(this.#root, s.name, f.path))) {
            out.push({ store: s.name, file: f.path });
          }
        }
      }
    }
    return out;
  }

  /**
   * Checks the fragments generation `dir` uses here after a read of them failed: sets each
   * damaged one aside and pulls it again. Resolves with the files replaced (none: the failure was
   * not a damaged copy here); rejects when one could not be replaced.
   */
  async heal(dir: string): Promise<string[]> {
    const bad = setAsideDamaged(this.#root, await scrubGenerationOffLoop(dir), this.#counters);
    for (const b of bad) {
      log.warn("damaged copy {store}/{file} set aside: {error}", { ...b });
      await this.pull(b.store, b.file);
    }
    return bad.map((b) => `${b.store}/${b.file}`);
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
 * The agent's `handlers` with `ckpt.pull` (over root `root`, pushing through `connect`) added, and
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
  return healing({ ...handlers, ...pullHandlers(root, connect) }, repair, {
    // A lazy split restore's first try may have moved pages on its sub-hosts: the CLI reloads them.
    restore: { gen: (a, ctx) => generation(a.path, ctx.role), again: (a) => !(a.lazy && a.split) },
    "ckpt.verify": { gen: (a, ctx) => generation(a.path, ctx.role) },
    "pages.load": { gen: (a, ctx) => generation(a.ckpt, ctx.role, "ckpt") },
  });
}

/**
 * `ckpt.pull {store, file, to, offset?}`: an agent asks this holder to push fragment `file` to it.
 * Only for a fragment this host holds whole, whose manifest here names the caller a holder, and
 * only to the caller's own address in that manifest: no agent gets a file it does not hold, nor
 * has one sent to a third host.
 */
function pullHandlers(
  root: string,
  connect: (addr: string) => Promise<RpcClient>,
): Record<string, RpcHandler> {
  return {
    "ckpt.pull": (args, ctx) => {
      const path = inStore(root, args, "file");
      const store = String(args.store), file = String(args.file);
      const deny = (why: string) =>
        new RpcError("permission-denied", `ckpt.pull of ${store}/${file} by ${ctx.peer}: ${why}`);
      let entry;
      try {
        entry = fragmentEntry(root, store, file);
      } catch {
        throw deny("no committed manifest here names that fragment");
      }
      if (!entry) throw deny("no committed manifest here names that fragment");
      if (!entry.holders.includes(ctx.peer)) {
        throw deny(`its manifest names ${entry.holders.join(", ")} as holders, not the caller`);
      }
      if (args.to !== addressOf(entry.m, ctx.peer)) {
        throw deny(`pushes go only to the caller's own address in the manifest`);
      }
      const size = existsSync(path) ? Deno.lstatSync(path).size : undefined;
      if (size !== entry.f.bytes) {
        throw new RpcError("failed", `${store}/${file}: no whole copy here to push`);
      }
      return pushStoreFile(connect, path, {
        store,
        file,
        to: String(args.to),
        offset: typeof args.offset === "number" ? args.offset : 0,
        repair: true,
      });
    },
  };
}
