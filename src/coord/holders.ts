/**
 * Which copy of each fragment a restore reads: every host the manifest names as holding it (its
 * writer and its copies) is asked what it has, and the fragment comes from one whose copy is whole
 * (the size the manifest records), the least loaded so far, so the pushes spread over the holders.
 * A host that does not answer, or holds a partial or missing copy, is passed over; a fragment no
 * holder has whole fails the restore in one line naming every holder and what it said.
 */
import type { CheckpointPlan } from "../agent/ckpt_files.ts";
import { addressOf } from "../ckpt/holders.ts";
import { ONE_HOST } from "../ckpt/save.ts";
import type { AgentCalls } from "./agent_calls.ts";

/** What one holder said about the files asked of it: what it has whole and in part, or why not. */
export type HolderAnswer =
  | { sizes: Record<string, number>; partial: Record<string, number> }
  | { error: string };

/** Asks every holder in `asked` (address → files of `store`) what it has, all at once. */
export async function askHolders(
  calls: AgentCalls,
  store: string,
  asked: Map<string, Iterable<string>>,
): Promise<Map<string, HolderAnswer>> {
  return new Map(
    await Promise.all(
      [...asked].map(async ([addr, files]): Promise<[string, HolderAnswer]> => {
        try {
          const r = await calls.call<
            { sizes?: Record<string, number>; partial?: Record<string, number> }
          >(addr, "ckpt.have", { store, files: [...files] });
          return [addr, { sizes: r.sizes ?? {}, partial: r.partial ?? {} }];
        } catch (e) {
          return [addr, { error: (e as Error).message }];
        }
      }),
    ),
  );
}

/**
 * The agent address of host `name` of checkpoint `plan`, found through agent `source`: the source's
 * own when `name` is the host that answered, or the checkpoint's taker (a one-host VM's host is
 * "main" in its fragments) when the taker answered or the agent did not say; else the one the
 * manifest records.
 */
export function holderAddress(
  plan: CheckpointPlan,
  source: string,
  name: string,
): string | undefined {
  const taker = plan.taker;
  const isTaker = name === taker || (name === ONE_HOST && !plan.split);
  const here = plan.host === undefined || (taker !== undefined && plan.host === taker);
  if (name === plan.host || (isTaker && here)) return source;
  return addressOf(plan, name);
}

/**
 * For each fragment of `plan`, the address to copy it from, among `holders[k]` (the addresses of
 * the hosts holding fragment k, the writer's first); `prefer[k]` is taken when it holds a whole
 * copy (the target itself: nothing moves). Hosts in `down` are known to be down and not asked: the
 * coordinator's restore after a failure would otherwise wait out a connection to the failed host.
 */
export async function chooseHolders(
  calls: AgentCalls,
  plan: CheckpointPlan,
  holders: string[][],
  prefer: string[],
  down: ReadonlySet<string> = new Set(),
): Promise<string[]> {
  const asked = new Map<string, string[]>();
  plan.fragments.forEach((f, k) => {
    for (const a of new Set([prefer[k], ...holders[k]])) {
      if (!down.has(a)) asked.set(a, [...(asked.get(a) ?? []), f.path]);
    }
  });
  const answers = await askHolders(calls, plan.store, asked);
  // Every holder is asked or known to be down: each has an answer below.
  for (const a of down) answers.set(a, { error: "down" });
  const load = new Map<string, number>();
  return plan.fragments.map((f, k) => {
    const whole = (a: string) => {
      const r = answers.get(a);
      return r !== undefined && "sizes" in r && r.sizes[f.path] === f.bytes;
    };
    if (whole(prefer[k])) return prefer[k];
    const ok = holders[k].filter(whole);
    if (!ok.length) {
      const said = holders[k].map((a) => {
        const r = answers.get(a)!;
        if ("error" in r) return `${a}: ${r.error}`;
        const size = r.sizes[f.path];
        return `${a}: ${size === undefined ? "missing" : `${size} of ${f.bytes} bytes`}`;
      });
      throw new Error(
        `fragment ${f.path} of checkpoint ${plan.id} has no whole copy on any host that held one (${
          said.join("; ") || "no holder's address is known"
        }); restore an older checkpoint`,
      );
    }
    const pick = ok.reduce((a, b) => (load.get(b) ?? 0) < (load.get(a) ?? 0) ? b : a);
    load.set(pick, (load.get(pick) ?? 0) + f.bytes);
    return pick;
  });
}
