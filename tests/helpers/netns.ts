/**
 * A host behind a cable the test can cut: a network namespace joined to this one by a veth pair,
 * and an agent of a test cluster started inside it on the namespace's address. Cutting sets the
 * namespace's end of the pair down, so packets are dropped silently, as on a pulled cable (no
 * `netem` in these kernels, and a refused connection would be kinder than a real cut).
 */
import { join } from "node:path";
import { issueHost } from "../../src/cli/ca_admin.ts";
import { selfCommand, spawnDetached } from "../../src/agent/spawn.ts";

async function ip(args: string[]): Promise<{ ok: boolean; err: string }> {
  const r = await new Deno.Command("ip", { args, stdout: "null", stderr: "piped" }).output();
  return { ok: r.success, err: new TextDecoder().decode(r.stderr).trim() };
}

/** One namespace, its veth pair and the two addresses on it. */
export class NetnsLink {
  /** The namespace's name. */
  readonly ns: string;
  /** The address of this side (the root namespace). */
  readonly outer: string;
  /** The address inside the namespace, which its agent listens on. */
  readonly inner: string;
  private readonly outerIf: string;
  private readonly innerIf: string;

  /** Names and a /30 subnet derived from `tag` (0..255), so runs at other offsets do not collide. */
  constructor(tag: number) {
    this.ns = `dcres-fault${tag}`;
    this.outerIf = `dcf${tag}o`;
    this.innerIf = `dcf${tag}i`;
    this.outer = `10.231.${tag}.1`;
    this.inner = `10.231.${tag}.2`;
  }

  /**
   * Creates the namespace and the pair (removing a stale one a killed run left); returns why it
   * cannot, or undefined once both ends are up.
   */
  async create(): Promise<string | undefined> {
    await this.destroy();
    const steps = [
      ["netns", "add", this.ns],
      ["link", "add", this.outerIf, "type", "veth", "peer", "name", this.innerIf, "netns", this.ns],
      ["addr", "add", `${this.outer}/30`, "dev", this.outerIf],
      ["link", "set", this.outerIf, "up"],
      ["-n", this.ns, "addr", "add", `${this.inner}/30`, "dev", this.innerIf],
      ["-n", this.ns, "link", "set", this.innerIf, "up"],
      ["-n", this.ns, "link", "set", "lo", "up"],
    ];
    for (const s of steps) {
      const r = await ip(s);
      if (!r.ok) {
        await this.destroy();
        return `ip ${s.join(" ")}: ${r.err}`;
      }
    }
    return undefined;
  }

  /** Cuts the link: the namespace's end goes down and every packet either way is lost. */
  async cut(): Promise<void> {
    const r = await ip(["-n", this.ns, "link", "set", this.innerIf, "down"]);
    if (!r.ok) throw new Error(`cutting ${this.ns}: ${r.err}`);
  }

  /** Joins the link again (the address stays; its route comes back with the link). */
  async heal(): Promise<void> {
    const r = await ip(["-n", this.ns, "link", "set", this.innerIf, "up"]);
    if (!r.ok) throw new Error(`healing ${this.ns}: ${r.err}`);
  }

  /** Removes the namespace, which takes the pair with it; a missing one is fine. */
  async destroy(): Promise<void> {
    await ip(["netns", "del", this.ns]);
    // A root-side end left by a half-made pair.
    await ip(["link", "del", this.outerIf]);
  }

  /**
   * Starts cluster node `name` (its directory under `root`, the cluster's CA in `root/ca`) as an
   * agent inside the namespace on `inner:port`, with a certificate naming that address; resolves
   * once it is ready. Its pid is written where scripts/cluster's `kill` and `down` find it.
   */
  async startAgent(root: string, name: string, port: number): Promise<void> {
    const dir = join(root, name);
    const identity = join(dir, "identity");
    let named = false;
    try {
      named = Deno.readTextFileSync(join(identity, "netns-ip")) === this.inner;
    } catch {
      // Issued by scripts/cluster for its loopback address.
    }
    if (!named) {
      await issueHost({
        caDir: join(root, "ca"),
        host: name,
        ips: [this.inner],
        outDir: identity,
        force: true,
      });
      Deno.writeTextFileSync(join(identity, "netns-ip"), this.inner);
    }
    const log = join(dir, "agent.log");
    const ready = () => {
      try {
        return Deno.readTextFileSync(log).split('"ready":true').length - 1;
      } catch {
        return 0;
      }
    };
    const before = ready();
    const self = selfCommand([
      ...["agent", "--listen", `${this.inner}:${port}`, "--data-dir", join(dir, "data")],
      ...["--identity", identity, "--guest-dir", join(root, "guests")],
    ]);
    // `ip netns exec` execs the agent, so the pid is the agent's own.
    const child = spawnDetached(
      { cmd: "ip", args: ["netns", "exec", this.ns, self.cmd, ...self.args] },
      log,
    );
    Deno.writeTextFileSync(join(dir, "agent.pid"), String(child.pid));
    const deadline = performance.now() + 30_000;
    while (ready() === before) {
      if (performance.now() > deadline) throw new Error(`${name} did not start; see ${log}`);
      await new Promise((r) => setTimeout(r, 50));
    }
  }
}
