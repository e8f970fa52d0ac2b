/**
 * What the coordinator restores a failed VM from: its newest committed checkpoint among the hosts
 * that are up (a checkpoint's fragments have copies, so the survivors of a split hold every part),
 * and the facts the placement rule needs about it (`restore_rule.ts`).
 */
import type { CheckpointPlan } from "../agent/ckpt_files.ts";
import { checkPlan } from "../agent/plan_reply.ts";
import type { GenerationRow } from "../ckpt/inspect.ts";
import { generationName } from "../ckpt/store.ts";
import type { AgentCalls } from "./agent_calls.ts";
import { holderAddress } from "./holders.ts";
import type { RestoreRuleInput } from "./restore_rule.ts";

/** A checkpoint found on the survivors. */
export interface RestoreSource {
  /** The agent that answered for it (it holds its manifest). */
  source: string;
  /** Its plan, as that agent gave it (a one-host checkpoint's as a split of one). */
  plan: CheckpointPlan;
  /** Its consistency point (ms since the epoch): the recovery point it offers. */
  pointMs: number;
}

/** No survivor holds a committed checkpoint of the VM. */
export class NoCheckpointError extends Error {
  constructor(vm: string, said: string[]) {
    super(
      `no host that is up holds a committed checkpoint of ${vm} (${said.join("; ") || "no host"})`,
    );
    this.name = "NoCheckpointError";
  }
}

/** The newest committed checkpoint of `vm` on any of `hosts` (each asked for its generations). */
export async function newestCheckpoint(
  calls: AgentCalls,
  vm: string,
  hosts: string[],
): Promise<RestoreSource> {
  const said: string[] = [];
  const found = await Promise.all(hosts.map(async (h) => {
    try {
      const rows = await calls.call<GenerationRow[]>(h, "ckpt.ls", { path: vm });
      const ok = Array.isArray(rows)
        ? rows.filter((r) => r.status === "ok" && Number.isSafeInteger(r.generation))
        : [];
      const top = ok.reduce<GenerationRow | undefined>(
        (a, r) => (a === undefined || r.generation > a.generation ? r : a),
        undefined,
      );
      if (!top) said.push(`${h}: none`);
      return top && { host: h, row: top };
    } catch (e) {
      said.push(`${h}: ${(e as Error).message.slice(0, 200)}`);
      return undefined;
    }
  }));
  // Newest first; a host whose plan cannot be had or checked passes to the next holder, of the same
  // generation when another has it.
  const ranked = found.filter((f) => f !== undefined).sort((a, b) =>
    b.row.generation - a.row.generation
  );
  for (const best of ranked) {
    let plan: CheckpointPlan;
    try {
      plan = checkPlan(
        best.host,
        await calls.call<unknown>(best.host, "ckpt.plan", {
          path: `${vm}/${generationName(best.row.generation)}`,
        }),
      );
    } catch (e) {
      said.push(`${best.host}: ${(e as Error).message.slice(0, 200)}`);
      continue;
    }
    const pointMs = Date.parse(best.row.createdAt ?? "");
    return {
      source: best.host,
      // A one-host checkpoint's fragments come from the agent that answered (a holder).
      plan: {
        ...plan,
        split: plan.split ??
          { mainMemBytes: plan.memSize, hosts: { main: "main" }, mainAddr: best.host },
      },
      pointMs: Number.isFinite(pointMs) ? pointMs : 0,
    };
  }
  throw new NoCheckpointError(vm, said);
}

/** The placement rule's input for restoring `src` onto `up`, the VM having run on `previous`. */
export function ruleInput(src: RestoreSource, up: string[], previous: string[]): RestoreRuleInput {
  const { plan, source } = src;
  const hosts = plan.split!.hosts;
  const names = Object.keys(hosts);
  const mainRole = names.find((n) => hosts[n] === "main")!;
  const roleBytes: Record<string, number> = {};
  const held: Record<string, Record<string, number>> = {};
  for (const f of plan.fragments) {
    roleBytes[f.host] = (roleBytes[f.host] ?? 0) + f.bytes;
    for (const h of new Set([f.host, ...(f.copies ?? [])])) {
      const a = holderAddress(plan, source, h);
      if (a === undefined || !up.includes(a)) continue;
      held[a] ??= {};
      held[a][f.host] = (held[a][f.host] ?? 0) + f.bytes;
    }
  }
  return {
    mainRole,
    subRoles: names.filter((n) => n !== mainRole),
    roleBytes,
    up,
    held,
    previous,
  };
}
