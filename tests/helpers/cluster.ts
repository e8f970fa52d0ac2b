/** Agents of this machine for a test (scripts/cluster), and the CLI run against them. */
import { assert, assertEquals } from "./assert.ts";
import { dcres } from "./cli.ts";
import type { VmInfo } from "../../src/vmm/control/protocol.ts";

/**
 * A fixed test port moved by `DCRES_TEST_PORT_OFFSET`, so two checkouts can run their cluster tests
 * at once on one machine without taking each other's ports.
 */
export function testPort(base: number): number {
  return base + Number(Deno.env.get("DCRES_TEST_PORT_OFFSET") ?? "0");
}

/** One test's cluster: its own directory, port and client identity. */
export class TestCluster {
  /** Environment of every command run against it. */
  readonly env: Record<string, string>;

  constructor(port: number) {
    const dir = Deno.makeTempDirSync({ prefix: "dcres-cluster-" });
    this.env = {
      DCRES_CLUSTER_DIR: dir,
      DCRES_CLUSTER_PORT: String(testPort(port)),
      // Inside the cluster's directory, so `down` removes the client's identity with it.
      XDG_CONFIG_HOME: `${dir}/client`,
    };
  }

  /** Stops the agents and their VMs; with DCRES_KEEP_CLUSTER set, leaves the directory and logs. */
  async down(): Promise<void> {
    if (Deno.env.get("DCRES_KEEP_CLUSTER")) {
      console.log(`  cluster kept in ${this.env.DCRES_CLUSTER_DIR}`);
      for (const d of Deno.readDirSync(this.env.DCRES_CLUSTER_DIR)) {
        if (d.isDirectory && d.name.startsWith("node")) await this.run("kill", d.name);
      }
      return;
    }
    await this.run("down");
  }

  /** Runs `scripts/cluster ARGS`; returns its stdout. */
  async run(...args: string[]): Promise<string> {
    const r = await new Deno.Command(new URL("../../scripts/cluster", import.meta.url).pathname, {
      args,
      env: this.env,
      stdout: "piped",
      stderr: "piped",
    }).output();
    assert(r.success, `cluster ${args.join(" ")}: ${new TextDecoder().decode(r.stderr)}`);
    return new TextDecoder().decode(r.stdout);
  }

  /**
   * Starts `n` agents; returns their addresses. With `peers` each has the others as its peers;
   * `zones` labels node K with the K-th zone (round the list).
   */
  async up(n: number, o: { peers?: boolean; zones?: string[] } = {}): Promise<string[]> {
    const agents = JSON.parse(
      await this.run(
        "up",
        String(n),
        ...(o.peers ? ["--peers"] : []),
        ...(o.zones ? ["--zones", o.zones.join(",")] : []),
      ),
    ) as Array<{ addr: string }>;
    return agents.map((a) => a.addr);
  }

  /** Runs `dcres ARGS`, which must succeed; returns its stdout. */
  async ok(args: string[]): Promise<string> {
    const r = await dcres(args, { env: this.env, timeoutMs: 900_000 });
    assertEquals(r.code, 0, `dcres ${args.join(" ")}: ${r.stderr}${r.stdout}`);
    return r.stdout;
  }

  /** Runs `dcres ARGS`, which must fail with one line naming `what`; returns stderr. */
  async fails(args: string[], what: RegExp): Promise<string> {
    const r = await dcres(args, { env: this.env, timeoutMs: 300_000 });
    assertEquals(r.code === 0, false, `dcres ${args.join(" ")} succeeded: ${r.stdout}`);
    assertEquals(r.stderr.trim().split("\n").length, 1, r.stderr);
    assert(what.test(r.stderr), r.stderr);
    return r.stderr;
  }

  /** Polls `vm ls` on `agent` until `pred` holds for VM `name`; fails after `ms`. */
  async until(
    agent: string,
    name: string,
    pred: (v: VmInfo) => boolean,
    ms: number,
  ): Promise<VmInfo> {
    const deadline = performance.now() + ms;
    let last: VmInfo | undefined;
    while (performance.now() < deadline) {
      const vms = JSON.parse(await this.ok(["--agent", agent, "--json", "vm", "ls"])) as VmInfo[];
      last = vms.find((v) => v.name === name);
      if (last && pred(last)) return last;
      await new Promise((r) => setTimeout(r, 500));
    }
    throw new Error(`${name} never reached the expected state: ${JSON.stringify(last)}`);
  }
}
