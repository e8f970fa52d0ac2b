/**
 * The restore of a split VM's checkpoint, run by the coordinator after a failure and by
 * `dcres restore CKPT` in-process (the same code, each calling agents as itself): every target host gets
 * the fragments it will load (pushed agent to agent by the hosts that saved them, all at once, when
 * it lacks them), the sub-hosts load theirs into page stores, and the main host restores the machine with
 * its own pages and pages the rest from the sub-hosts. `single` restores onto one host instead,
 * `main`/`subs` onto another split, `map` has a new host play an old one's part.
 */
import { dirname } from "node:path";
import type { AccelChoice } from "../accel/accel.ts";
import type { CheckpointPlan } from "../agent/ckpt_files.ts";
import { PAGE_SIZE } from "../accel/accel.ts";
import { parseHostPort } from "../net/address.ts";
import { RpcError } from "../rpc/errors.ts";
import type { AgentCalls } from "./agent_calls.ts";
import { chooseHolders, holderAddress } from "./holders.ts";
import { pushFile } from "./store_push.ts";

/** Targets that cannot take the checkpoint (a host named twice, an unknown host mapped, ...). */
export class RestoreTargetError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "RestoreTargetError";
  }
}

/** `addr` as a target of `what`, checked to be HOST:PORT. */
function checkTarget(what: string, addr: string): void {
  try {
    parseHostPort(addr);
  } catch (e) {
    throw new RestoreTargetError(`${what} ${(e as Error).message}`);
  }
}

/** Where a split restore puts things. */
export interface SplitTargets {
  /** Restore everything onto this one host. */
  single?: string;
  /** Main host of the restored split. */
  main?: string;
  /** Sub-hosts of the restored split. */
  subs?: string[];
  /** OLD=NEW: NEW plays the part of OLD (a host name or address of the checkpoint). */
  map?: string[];
  /** Every host of the checkpoint (by name) → the host that plays its part (several may share one). */
  assign?: Record<string, string>;
}

/** How a split restore runs. */
export interface RestoreOptions {
  /** Name of the restored VM (default: the checkpoint's). */
  name?: string;
  /** Resume at once and load memory on demand. */
  lazy?: boolean;
  /** The accelerator to restore on. */
  accel?: AccelChoice;
  /** Hosts known to be down: none of their copies is asked for. */
  down?: readonly string[];
}

/** The outcome of a split restore. */
export interface SplitRestoreReport {
  /** Restored VM name. */
  name: string;
  /** Main host (or the single host). */
  main: string;
  /** Sub-hosts, with the pages each loaded. */
  subs: Record<string, number>;
  /** Files copied between hosts, and their bytes. */
  copied: { files: number; bytes: number; ms: number };
  /**
   * ms from the start of the copies until every sub-host had loaded its pages (each loads once its
   * own copies are in, so this overlaps `copied.ms`).
   */
  loadMs: number;
  /** ms from the start until the VM ran with all of main's pages. */
  totalMs: number;
  /** The main host's restore timings. */
  restore: Record<string, unknown>;
}

/** Which host each fragment's pages go to, and the restored split's hosts. */
function placeFragments(
  plan: CheckpointPlan,
  source: string,
  t: SplitTargets,
): { main: string; subs: string[]; target: string[]; holders: string[][] } {
  const hosts = plan.split!.hosts;
  const names = Object.keys(hosts);
  const mainName = names.find((n) => hosts[n] === "main")!;
  const known = (n: string) => holderAddress(plan, source, n);
  const addrOf = (n: string) => known(n) ?? source;
  const subNames = names.filter((n) => n !== mainName);
  const map = new Map<string, string>();
  for (const m of t.map ?? []) {
    const [old, neu] = m.split("=");
    if (!old || !neu) {
      throw new RestoreTargetError(
        `--map ${m}: use OLD=NEW, OLD a host name or address, NEW HOST:PORT`,
      );
    }
    checkTarget("--map", neu);
    const name = names.find((n) => n === old || addrOf(n) === old);
    if (!name) {
      throw new RestoreTargetError(
        `--map ${m}: ${old} took no part in checkpoint ${plan.id} (its hosts: ${
          names.map((n) => `${n} ${addrOf(n)}`).join(", ")
        })`,
      );
    }
    map.set(name, neu);
  }
  const roleTarget = new Map<string, string>();
  let main: string, subs: string[];
  if (t.single) {
    main = t.single;
    subs = [];
    for (const n of names) roleTarget.set(n, t.single);
  } else if (t.assign) {
    const to = (n: string) => {
      const a = t.assign![n];
      if (!a) throw new RestoreTargetError(`no host is assigned the part of ${n}`);
      return a;
    };
    main = to(mainName);
    subs = [...new Set(subNames.map(to))].filter((a) => a !== main);
    for (const n of names) roleTarget.set(n, to(n));
  } else if (t.main) {
    main = t.main;
    subs = t.subs ?? [];
    if (!subs.length) {
      throw new RestoreTargetError("--main needs --sub HOST:PORT,... (or use --single)");
    }
    roleTarget.set(mainName, main);
    subNames.forEach((n, i) => roleTarget.set(n, subs[i % subs.length]));
  } else {
    main = map.get(mainName) ?? addrOf(mainName);
    subs = subNames.map((n) => map.get(n) ?? addrOf(n));
    roleTarget.set(mainName, main);
    subNames.forEach((n, i) => roleTarget.set(n, subs[i]));
  }
  for (const a of [main, ...subs]) checkTarget("target host", a);
  if (subs.includes(main)) {
    throw new RestoreTargetError(`${main} cannot be both main and a sub-host`);
  }
  if (new Set(subs).size !== subs.length) throw new RestoreTargetError("a sub-host is named twice");
  const target = plan.fragments.map((f) => {
    const r = roleTarget.get(f.host);
    if (!r) throw new Error(`fragment ${f.path} was saved by ${f.host}, not a host of the split`);
    return r;
  });
  const holders = plan.fragments.map((f) =>
    [f.host, ...(f.copies ?? [])].map(known).filter((a): a is string => a !== undefined)
  );
  return { main, subs, target, holders };
}

/** Restores split checkpoint `path` (found through the agent `source`) onto `t`'s hosts. */
export async function restoreSplit(
  calls: AgentCalls,
  source: string,
  plan: CheckpointPlan,
  opts: RestoreOptions,
  t: SplitTargets,
): Promise<SplitRestoreReport> {
  const placed = placeFragments(plan, source, t);
  try {
    return await restoreOnce(calls, source, plan, opts, t, placed);
  } catch (e) {
    // A target that met a damaged copy set it aside (and could not replace it itself, or a lazy
    // restore's pages moved): once more, fetching whole copies again. Any other failure stands: a
    // second try could reload the sub-hosts under a VM that did start.
    if (!(e instanceof RpcError && e.code === "damaged-copy")) throw e;
    return await restoreOnce(calls, source, plan, opts, t, placed);
  }
}

/** One attempt at {@link restoreSplit}: fetch what the targets lack, load the sub-hosts, restore. */
async function restoreOnce(
  calls: AgentCalls,
  source: string,
  plan: CheckpointPlan,
  opts: RestoreOptions,
  t: SplitTargets,
  { main, subs, target, holders: copiesAt }: ReturnType<typeof placeFragments>,
): Promise<SplitRestoreReport> {
  const t0 = performance.now();
  const name = opts.name ?? plan.vm;
  const origin = await chooseHolders(calls, plan, copiesAt, target, new Set(opts.down));
  const gen = `${plan.store}/${plan.generation}`;
  // Each target needs its fragments and the manifests of their generations (so a copied
  // generation is a committed one there), the restored generation's last.
  const wants = new Map<string, Map<string, { from: string }>>();
  const want = (host: string, file: string, from: string) => {
    const m = wants.get(host) ?? new Map();
    m.set(file, { from });
    wants.set(host, m);
  };
  plan.fragments.forEach((f, k) => {
    want(target[k], f.path, origin[k]);
    want(target[k], `${dirname(f.path)}/MANIFEST`, source);
  });
  want(main, `${plan.generation}/MANIFEST`, source);
  const tc = performance.now();
  let files = 0, bytes = 0, copiedAt = tc;
  const copyTo = async (host: string) => {
    const files_ = wants.get(host);
    if (!files_) return;
    const list = [...files_.keys()];
    const { missing, partial } = await calls.call<
      { missing: string[]; partial: Record<string, number> }
    >(host, "ckpt.have", { store: plan.store, files: list });
    // Fragments first, manifests last: a generation there is complete before it is committed.
    const order = missing.sort((a, b) =>
      Number(a.endsWith("MANIFEST")) - Number(b.endsWith("MANIFEST"))
    );
    const frags = order.filter((f) => !f.endsWith("MANIFEST"));
    const mans = order.filter((f) => f.endsWith("MANIFEST"));
    const copy = async (f: string) => {
      const w = files_.get(f)!;
      bytes += await pushFile(calls, w.from, host, plan.store, f, partial?.[f] ?? 0);
      files++;
    };
    await Promise.all(frags.map(copy));
    for (const f of mans) await copy(f);
    copiedAt = Math.max(copiedAt, performance.now());
  };
  const copies = new Map([...wants.keys()].map((h) => [h, copyTo(h)] as const));
  const copied = () => ({ files, bytes, ms: copiedAt - tc });
  if (t.single || (t.assign && !subs.length)) {
    await Promise.all(copies.values());
    const restore = await calls.call<Record<string, unknown>>(main, "restore", {
      path: gen,
      name,
      lazy: !!opts.lazy,
      ...(opts.accel ? { accel: opts.accel } : {}),
    });
    return {
      name,
      main,
      subs: {},
      copied: copied(),
      loadMs: 0,
      totalMs: performance.now() - t0,
      restore,
    };
  }
  const pages = plan.memSize / PAGE_SIZE;
  // Each sub-host loads as soon as its own copies are in, while others may still be copying.
  const [loaded] = await Promise.all([
    Promise.all(subs.map(async (s) => {
      await copies.get(s);
      return await calls.call<{ heldPages: number }>(s, "pages.load", {
        vm: name,
        pages,
        ckpt: gen,
        fragments: target.flatMap((h, k) => h === s ? [k] : []),
        // Lazily, a sub-host answers for its pages at once and reads them in as main asks.
        ...(opts.lazy ? { lazy: true } : {}),
      });
    })),
    Promise.all(copies.values()),
  ]);
  const loadMs = performance.now() - tc;
  const holders = target.map((h) => h === main ? 0 : 1 + subs.indexOf(h));
  const restore = await calls.call<Record<string, unknown>>(main, "restore", {
    path: gen,
    name,
    lazy: !!opts.lazy,
    ...(opts.accel ? { accel: opts.accel } : {}),
    split: { mainMemBytes: plan.split!.mainMemBytes, subs, holders },
  });
  return {
    name,
    main,
    subs: Object.fromEntries(subs.map((s, i) => [s, loaded[i].heldPages])),
    copied: copied(),
    loadMs,
    totalMs: performance.now() - t0,
    restore,
  };
}
