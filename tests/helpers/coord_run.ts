/**
 * A coordinator for a test cluster: its identity and config in the cluster's directory, the process
 * that runs it (`dcres coord`, or an agent with `--coordinator`), and `coord status` read while it
 * runs.
 */
import { existsSync } from "node:fs";
import { join } from "node:path";
import { issueHost } from "../../src/cli/ca_admin.ts";
import { selfCommand, spawnDetached } from "../../src/agent/spawn.ts";
import type { CoordStatus, HostStatus } from "../../src/coord/status.ts";
import type { TestCluster } from "./cluster.ts";

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Timings short enough for a test: a lost host is suspect after 1 s, down after about 6 s. */
export const FAST_TIMINGS = {
  heartbeatMs: 300,
  suspectMs: 1000,
  downMs: 2000,
  lease: { ttlMs: 5000, drift: 0.01, fenceMs: 1000 },
};

/** Host `addr` in `s`. */
export function hostOf(s: CoordStatus, addr: string): HostStatus {
  const h = s.hosts.find((h) => h.addr === addr);
  if (!h) throw new Error(`coord status has no host ${addr}: ${JSON.stringify(s.hosts)}`);
  return h;
}

/** One coordinator of a test cluster. */
export class TestCoord {
  /** Its config file. */
  readonly conf: string;
  /** Its log. */
  readonly log: string;
  readonly #c: TestCluster;
  #proc?: Deno.ChildProcess;

  /**
   * Writes `NAME.json`, a config leasing `agents` (named nodeN, as scripts/cluster does) with
   * `extra` fields over {@link FAST_TIMINGS}, and issues the cluster's coordinator certificate
   * unless it has one; `NAME.log` is its log. Coordinators of one cluster share the store.
   */
  static async create(
    c: TestCluster,
    agents: string[],
    extra: Record<string, unknown> = {},
    name = "coord",
  ): Promise<TestCoord> {
    const dir = c.env.DCRES_CLUSTER_DIR;
    if (!existsSync(join(dir, "coord", "identity", "host.crt"))) {
      await issueHost({
        caDir: join(dir, "ca"),
        host: "coord",
        role: "coordinator",
        outDir: join(dir, "coord", "identity"),
      });
    }
    const config = {
      agents: agents.map((addr, i) => ({ name: `node${i + 1}`, addr })),
      identityDir: join(dir, "coord", "identity"),
      dataDir: join(dir, "coord"),
      id: "coord-a",
      ...FAST_TIMINGS,
      ...extra,
    };
    const t = new TestCoord(c, join(dir, `${name}.json`), join(dir, `${name}.log`));
    Deno.writeTextFileSync(t.conf, JSON.stringify(config));
    return t;
  }

  private constructor(c: TestCluster, conf: string, log: string) {
    this.#c = c;
    this.conf = conf;
    this.log = log;
  }

  /** Starts `dcres ARGS` (by default `dcres coord --config CONF`) as this coordinator's process. */
  start(args = ["coord", "--config", this.conf]): void {
    this.#proc = spawnDetached(selfCommand(args), this.log);
  }

  /** Its process's pid, while it has one. */
  get pid(): number | undefined {
    return this.#proc?.pid;
  }

  /** Stops the process with `sig` and waits until it has gone (its child is unref'd). */
  async stop(sig: Deno.Signal = "SIGTERM"): Promise<void> {
    const p = this.#proc;
    this.#proc = undefined;
    if (!p) return;
    try {
      p.kill(sig);
    } catch {
      return;
    }
    for (const end = Date.now() + 15_000; Date.now() < end; await sleep(100)) {
      try {
        if (/^\d+ \(.*\) Z/.test(Deno.readTextFileSync(`/proc/${p.pid}/stat`))) return;
      } catch {
        return;
      }
    }
    throw new Error(`the coordinator's process did not stop on ${sig}; see ${this.log}`);
  }

  /** `dcres coord status --json`. */
  async status(): Promise<CoordStatus> {
    return JSON.parse(await this.#c.ok(["--json", "coord", "status", "--config", this.conf]));
  }

  /** Waits (at most `ms`) until `pred` holds of the status; returns that status. */
  async until(
    what: string,
    pred: (s: CoordStatus) => boolean,
    ms = 30_000,
  ): Promise<CoordStatus> {
    let last: CoordStatus | undefined;
    for (const end = Date.now() + ms; Date.now() < end; await sleep(250)) {
      try {
        last = await this.status();
        if (pred(last)) return last;
      } catch {
        // The store is not there until the coordinator has made it.
      }
    }
    throw new Error(`${what}: ${JSON.stringify(last)}; see ${this.log}`);
  }
}
