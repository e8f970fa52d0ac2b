/** Local agents for a benchmark (scripts/cluster) and the CLI run against them. */
import { selfCommand } from "../../src/agent/spawn.ts";
import type { VmInfo } from "../../src/vmm/control/protocol.ts";

/** A benchmark's own cluster: directory, port and client identity. */
export class BenchAgents {
  private readonly env: Record<string, string>;

  constructor(name: string, port: number) {
    this.env = {
      DCRES_CLUSTER_DIR: Deno.makeTempDirSync({ prefix: `dcres-bench-${name}-` }),
      DCRES_CLUSTER_PORT: String(port),
      XDG_CONFIG_HOME: Deno.makeTempDirSync({ prefix: `dcres-bench-${name}-client-` }),
    };
  }

  private async run(cmd: string, args: string[]): Promise<string> {
    const r = await new Deno.Command(cmd, { args, env: this.env, stdout: "piped", stderr: "piped" })
      .output();
    const err = new TextDecoder().decode(r.stderr).trim();
    if (!r.success) throw new Error(`${args.join(" ")}: ${err}`);
    return new TextDecoder().decode(r.stdout);
  }

  /** The cluster's directory: the CA, each node's data and identity. */
  get dir(): string {
    return this.env.DCRES_CLUSTER_DIR;
  }

  /** The operator identity scripts/cluster issued for this cluster. */
  get clientIdentityDir(): string {
    return `${this.env.DCRES_CLUSTER_DIR}/client`;
  }

  /** `scripts/cluster ARGS`. */
  cluster(...args: string[]): Promise<string> {
    return this.run(new URL("../cluster", import.meta.url).pathname, args);
  }

  /** Starts `n` agents; returns their addresses. */
  async up(n: number): Promise<string[]> {
    return (JSON.parse(await this.cluster("up", String(n))) as Array<{ addr: string }>).map((a) =>
      a.addr
    );
  }

  /** `dcres ARGS`; returns stdout. */
  dcres(...args: string[]): Promise<string> {
    const self = selfCommand(args);
    return this.run(self.cmd, self.args);
  }

  /** VM `name` as `vm ls` on `agent` shows it. */
  async info(agent: string, name: string): Promise<VmInfo> {
    const vms = JSON.parse(await this.dcres("--agent", agent, "--json", "vm", "ls")) as VmInfo[];
    const v = vms.find((x) => x.name === name);
    if (!v) throw new Error(`${name} is gone from ${agent}`);
    return v;
  }
}
