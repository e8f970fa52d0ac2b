/**
 * The state of one fault-injection run (tests/fault_injection_test.ts): a cluster of three agents,
 * the split VM "sv" over them, every checkpoint ever seen committed, and the tallies the run
 * reports. The faults themselves are in fault_trials.ts.
 */
import { assert, assertEquals } from "./assert.ts";
import { type CliResult, dcres } from "./cli.ts";
import { TestCluster } from "./cluster.ts";
import type { NetnsLink } from "./netns.ts";
import type { VmInfo } from "../../src/vmm/control/protocol.ts";

/** Longest one CLI command may take here; a hang fails the trial instead of the whole run. */
export const STEP_MS = 120_000;

/** Resolves after `ms`. */
export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** mulberry32: a seeded generator, so a failing run can be replayed with its seed. */
export function rng(s: number): () => number {
  return () => {
    s = (s + 0x6d2b79f5) | 0;
    let t = Math.imul(s ^ (s >>> 15), 1 | s);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 2 ** 32;
  };
}

/** A CLI error raised while connecting, before any request was sent. */
const SLOW_CONNECT =
  /(connecting to the agent at \S+|the agent's proof|the agent's verdict) timed out after/;

/** One generation of "sv" as `ckpt ls --json` lists it. */
export interface Generation {
  /** Its number. */
  generation: number;
  /** "ok" once committed. */
  status: string;
  /** The checkpoint's id. */
  id?: string;
  /** The checkpoint an incremental builds on. */
  parent?: string;
  /** A merged generation: the checkpoint it stands for (its chain was squashed into it). */
  mergedFromId?: string;
}

/** One fault-injection run: the cluster, the split VM "sv" and what was committed so far. */
export class FaultRun {
  /** The cluster (its own directory and port). */
  readonly c: TestCluster = new TestCluster(7485);
  /** The seeded generator every random choice of the run comes from. */
  readonly rand: () => number;
  /** Agent addresses: main first, then the sub-hosts. */
  hosts: string[] = [];
  /** When set, node3 runs in this namespace and is started through it. */
  netns?: NetnsLink;
  /** Ids of every checkpoint ever listed as committed, with their generations. */
  readonly committed: Map<string, number> = new Map();
  /** Each checkpoint's parent, as listed: the chain a merge squashes. */
  readonly #parents = new Map<string, string>();
  /** Committed checkpoints found lost (not whole on every host, or no longer listed). */
  lost = 0;
  /** Restores of a committed checkpoint made after a fault. */
  restores = 0;
  /** Of them, how many failed or did not verify. */
  badRestores = 0;
  /** Live guests (never restored) that failed `guest verify` after a fault, with why. */
  liveBad: string[] = [];
  /** Every lost checkpoint and bad restore, as printed: the failure message carries them. */
  readonly problems: string[] = [];
  /** Failures that said more than one line, or nothing, with what they were. */
  unclean: string[] = [];
  /** Trials run, by kind. */
  readonly trials: Map<string, number> = new Map();
  /** Sub-host agents killed so far (they are killed in turn). */
  subKills = 0;
  /** CLI commands retried because an agent did not take the connection in time. */
  slowConnects = 0;

  constructor(seed: number) {
    this.rand = rng(seed);
  }

  /** Counts one trial of `kind`. */
  count(kind: string): void {
    this.trials.set(kind, (this.trials.get(kind) ?? 0) + 1);
  }

  /** One of `xs`, drawn. */
  pick<T>(xs: readonly T[]): T {
    return xs[Math.floor(this.rand() * xs.length)];
  }

  /**
   * Runs `dcres ARGS`. One refused before it reached the agent (an agent of this loaded machine
   * that took over the 10 s handshake limit to answer) did nothing, so it is run again, counted.
   */
  async cli(args: string[], ms = STEP_MS): Promise<CliResult> {
    for (let i = 0;; i++) {
      const r = await dcres(args, { env: this.c.env, timeoutMs: ms });
      if (r.code === 0 || i === 2 || !SLOW_CONNECT.test(r.stderr)) {
        return r;
      }
      this.slowConnects++;
      console.log(`  slow connect, again: dcres ${args.join(" ")}: ${r.stderr.trim()}`);
    }
  }

  /** Runs `dcres ARGS`, which must succeed; returns its stdout. */
  async ok(args: string[], ms = STEP_MS): Promise<string> {
    const r = await this.cli(args, ms);
    assertEquals(r.code, 0, `dcres ${args.join(" ")}: ${r.stderr}${r.stdout}`);
    return r.stdout;
  }

  /** The main host's address. */
  get main(): string {
    return this.hosts[0];
  }

  /** The VMs an agent runs. */
  async vms(agent = this.main): Promise<VmInfo[]> {
    return JSON.parse(await this.ok(["--agent", agent, "--json", "vm", "ls"]));
  }

  /** Polls until VM `name` on main satisfies `pred`. */
  async until(name: string, pred: (v: VmInfo) => boolean, ms: number): Promise<VmInfo> {
    const deadline = performance.now() + ms;
    let last: VmInfo | undefined;
    while (performance.now() < deadline) {
      last = (await this.vms()).find((v) => v.name === name);
      if (last && pred(last)) return last;
      // Each poll is a CLI process of its own: on a 2-core machine fewer leave the VMs more CPU.
      await sleep(1000);
    }
    throw new Error(`${name} never reached the expected state: ${JSON.stringify(last)}`);
  }

  /** Starts "sv": 64 MiB, 16 MiB of it on main, the rest on the two sub-hosts, paging all along. */
  async startSv(): Promise<void> {
    const [main, s1, s2] = this.hosts;
    await this.ok([
      ...["vm", "start", "--main", main, "--sub", `${s1},${s2}`, "--name", "sv"],
      ...["--mem", "64M", "--main-mem", "16M", "--ws", "32M", "--vcpus", "2"],
      ...["--pattern", "random"],
    ]);
    await this.until("sv", (v) => v.memstamp!.phase.every((p) => p >= 2), 300_000);
  }

  /** Generations of "sv" in each host's store. */
  async listings(): Promise<Generation[][]> {
    return await Promise.all(
      this.hosts.map(async (h) =>
        JSON.parse(await this.ok(["--agent", h, "--json", "ckpt", "ls", "sv"])) as Generation[]
      ),
    );
  }

  /**
   * Records what every host lists as committed; a checkpoint committed on main that some host no
   * longer holds whole, or that main no longer lists, is lost and counted.
   */
  async audit(what: string): Promise<void> {
    const lists = await this.listings();
    const okOn = (k: number, id: string) => lists[k].some((g) => g.id === id && g.status === "ok");
    for (const g of lists[0]) if (g.id && g.parent) this.#parents.set(g.id, g.parent);
    // A merge stands for its source and removes the chain it squashed, by design: not a loss.
    for (const g of lists[0]) {
      if (g.status !== "ok" || !g.mergedFromId) continue;
      for (let id: string | undefined = g.mergedFromId; id; id = this.#parents.get(id)) {
        this.committed.delete(id);
      }
    }
    for (const g of lists[0]) if (g.status === "ok" && g.id) this.committed.set(g.id, g.generation);
    for (const id of this.committed.keys()) {
      const missing = this.hosts.filter((_, k) => !okOn(k, id));
      if (missing.length) {
        this.lost++;
        this.problem(`LOST after ${what}: ${id} not committed on ${missing.join(", ")}`);
      }
    }
  }

  /** The newest committed checkpoint's id. */
  latest(): string {
    let best: [string, number] | undefined;
    for (const [id, g] of this.committed) if (!best || g > best[1]) best = [id, g];
    assert(best, "no committed checkpoint");
    return best[0];
  }

  /** The pid of node `i`'s agent (1-based), as last started. */
  agentPid(i: number): number {
    return Number(Deno.readTextFileSync(`${this.c.env.DCRES_CLUSTER_DIR}/node${i}/agent.pid`));
  }

  /**
   * Whether node `i`'s agent (1-based) is alive. A killed agent whose parent has not reaped it yet
   * (PID 1 here reaps late) is a zombie that still takes signals: it counts as down.
   */
  agentUp(i: number): boolean {
    try {
      const stat = Deno.readTextFileSync(`/proc/${this.agentPid(i)}/stat`);
      const state = stat.slice(stat.lastIndexOf(")") + 2, stat.lastIndexOf(")") + 3);
      return state !== "Z" && state !== "X";
    } catch {
      return false;
    }
  }

  /**
   * Waits (at most 30 s) until node `i`'s agent, just killed, is dead: an agent killed inside
   * uninterruptible I/O (an fdatasync mid-checkpoint) runs on until that returns, so it would
   * count as up and never be started again.
   */
  async agentGone(i: number): Promise<void> {
    for (const end = performance.now() + 30_000; this.agentUp(i) && performance.now() < end;) {
      await sleep(50);
    }
  }

  /** Starts every agent that is down again on its data (node3 in its namespace if it has one). */
  async agentsUp(): Promise<void> {
    for (let i = 1; i <= this.hosts.length; i++) {
      if (this.agentUp(i)) continue;
      if (i === 3 && this.netns) {
        const port = Number(this.c.env.DCRES_CLUSTER_PORT);
        await this.netns.startAgent(this.c.env.DCRES_CLUSTER_DIR, "node3", port);
      } else await this.c.run("start", `node${i}`);
    }
  }

  /** Checks a live VM after a fault: running again (a paused one resumes) and verified. */
  async verifyLive(name: string, what: string): Promise<void> {
    // A VM paused by a sub-host's death or a cut link resumes once the sub-host is back.
    await this.until(name, (v) => v.state === "running", 60_000);
    const v = await this.cli(["--agent", this.main, "guest", "verify", name, "--timeout", "90s"]);
    if (!v.stdout.startsWith("OK")) this.liveBad.push(`${what}: ${name}: ${v.stdout}${v.stderr}`);
  }

  /** Agents back up, "sv" running (restored from its latest checkpoint if it is gone) and verified. */
  async recover(what: string): Promise<void> {
    await this.agentsUp();
    if ((await this.vms()).some((v) => v.name === "sv")) return await this.verifyLive("sv", what);
    await this.restoreLatest(what);
  }

  /** Restores the latest committed checkpoint of "sv" (eagerly or lazily, drawn) and verifies it. */
  async restoreLatest(what: string, lazy = this.rand() < 0.3): Promise<void> {
    const id = this.latest();
    this.restores++;
    const r = await this.cli(["--agent", this.main, "restore", id, ...(lazy ? ["--lazy"] : [])]);
    const v = r.code === 0
      ? await this.cli(["--agent", this.main, "guest", "verify", "sv", "--timeout", "90s"])
      : undefined;
    if (!v?.stdout.startsWith("OK")) {
      this.badRestores++;
      this.problem(
        `BAD RESTORE after ${what} of ${id}${lazy ? " (lazy)" : ""}: ${r.stderr}${
          v ? v.stdout + v.stderr : ""
        }`,
      );
      // Whatever is left runs no further: the next trial starts from a clean restore.
      await this.cli(["--agent", this.main, "vm", "stop", "sv"]);
    }
  }

  /** Prints a lost checkpoint or a bad restore and keeps it for the failure message. */
  problem(line: string): void {
    this.problems.push(line.trim());
    console.log(`  ${line.trim()}`);
  }

  /** The summary line, and every live guest that failed to verify. */
  report(): string {
    const kinds = [...this.trials].map(([k, n]) => `${n} ${k}`).join(", ");
    const total = [...this.trials.values()].reduce((a, b) => a + b, 0);
    return `${total} trials (${kinds}), ${this.committed.size} committed checkpoints, ` +
      `${this.restores} restores: ${this.lost + this.badRestores} lost a committed checkpoint or ` +
      `failed to verify a restore (${this.lost} lost, ${this.badRestores} restores bad); live ` +
      `guests that failed to verify: ${this.liveBad.length}; connections retried: ` +
      `${this.slowConnects}; failures not in one line: ${this.unclean.length}` +
      this.liveBad.map((l) => `\n  live: ${l}`).join("") +
      this.unclean.map((l) => `\n  unclean: ${l}`).join("");
  }
}
