/** A test's coordinator processes over a TestCluster: config, start, kill, and status polling. */
import { join } from "node:path";
import { issueHost } from "../../src/cli/ca_admin.ts";
import { selfCommand, spawnDetached } from "../../src/agent/spawn.ts";
import type { CoordStatus } from "../../src/coord/status.ts";
import type { TestCluster } from "./cluster.ts";

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Coordinators of one cluster, sharing one identity. */
export class TestCoords {
  readonly #c: TestCluster;
  readonly #dir: string;
  readonly #procs: Deno.ChildProcess[] = [];

  private constructor(c: TestCluster) {
    this.#c = c;
    this.#dir = c.env.DCRES_CLUSTER_DIR;
  }

  /** Issues a coordinator certificate in the cluster's CA. */
  static async create(c: TestCluster): Promise<TestCoords> {
    const t = new TestCoords(c);
    await issueHost({
      caDir: join(t.#dir, "ca"),
      host: "coord",
      role: "coordinator",
      outDir: join(t.#dir, "coord", "identity"),
    });
    return t;
  }

  /** Writes config `name` (the identity and data dir filled in); returns its path. */
  config(name: string, cfg: Record<string, unknown>): string {
    const file = join(this.#dir, `${name}.json`);
    Deno.writeTextFileSync(
      file,
      JSON.stringify({
        identityDir: join(this.#dir, "coord", "identity"),
        dataDir: join(this.#dir, "coord"),
        id: name,
        ...cfg,
      }),
    );
    return file;
  }

  /** The log of config `file`'s coordinator. */
  log(file: string): string {
    return file.replace(/\.json$/, ".log");
  }

  /** Starts a coordinator on config `file`. */
  start(file: string): Deno.ChildProcess {
    const p = spawnDetached(selfCommand(["coord", "--config", file]), this.log(file));
    this.#procs.push(p);
    return p;
  }

  /** Kills `p` with `sig` and waits until it has gone (its child is unref'd, so by /proc). */
  async stop(p: Deno.ChildProcess, sig: Deno.Signal = "SIGTERM"): Promise<void> {
    try {
      p.kill(sig);
    } catch {
      return;
    }
    for (const end = Date.now() + 15_000; Date.now() < end; await sleep(50)) {
      try {
        if (/^\d+ \(.*\) Z/.test(Deno.readTextFileSync(`/proc/${p.pid}/stat`))) return;
      } catch {
        return;
      }
    }
    throw new Error(`coordinator ${p.pid} did not stop on ${sig}`);
  }

  /** Stops every coordinator started. */
  async stopAll(): Promise<void> {
    for (const p of this.#procs) await this.stop(p);
  }

  /** `coord status --json` of config `file`. */
  async status(file: string): Promise<CoordStatus> {
    return JSON.parse(await this.#c.ok(["--json", "coord", "status", "--config", file]));
  }

  /** Polls the status of `file` until `pred` holds; fails after `ms` with the last status. */
  async until(
    file: string,
    what: string,
    pred: (s: CoordStatus) => boolean,
    ms = 60_000,
  ): Promise<CoordStatus> {
    let last: CoordStatus | undefined;
    for (const end = Date.now() + ms; Date.now() < end; await sleep(200)) {
      try {
        last = await this.status(file);
        if (pred(last)) return last;
      } catch {
        // The store is not there until the coordinator has made it.
      }
    }
    throw new Error(`${what}: ${JSON.stringify(last)}; see ${this.log(file)}`);
  }
}
