/**
 * A local many-host harness: `up N` starts N agents on this machine (127.0.0.2.., each with its own
 * certificate, port and data directory), leaves a client identity where the CLI finds it by default,
 * and prints `[{"name", "addr"}]` on stdout; `down` stops the agents and their VMs; `kill NAME`
 * fails a host (SIGKILL to its agent and its VMs) and `start NAME` starts its agent again on its
 * data. `up N --peers` gives every agent the others as its peers, `--zones A,B,...` gives node K
 * the K-th zone label (round the list).
 */
import { basename, join, resolve } from "node:path";
import { findGuestKernel } from "../src/vmm/boot/initramfs.ts";
import { initCa, issueHost } from "../src/cli/ca_admin.ts";
import { selfCommand, spawnDetached } from "../src/agent/spawn.ts";
import { defaultClientIdentityDir } from "../src/cli/remote.ts";
import { listVms, request } from "../src/vmm/control/client.ts";
import { existsSync } from "node:fs";

const root = resolve(
  Deno.env.get("DCRES_CLUSTER_DIR") ?? new URL("../.cluster", import.meta.url).pathname,
);
const PORT = Number(Deno.env.get("DCRES_CLUSTER_PORT") ?? 7400);
const say = (s: string) => console.error(`cluster: ${s}`);

function nodes(): string[] {
  try {
    return [...Deno.readDirSync(root)].filter((e) => e.isDirectory && /^node\d+$/.test(e.name)).map(
      (e) => e.name,
    ).sort();
  } catch {
    return [];
  }
}

/** Marks a client identity directory this script made, so a later `up` may replace it. */
const OURS = ".made-by-dcres-cluster";

/**
 * Issues this cluster's operator identity into the cluster directory, and into the CLI's default
 * place too unless an identity this script did not make is there: an operator's own is kept.
 */
async function issueClient(): Promise<string> {
  const ca = join(root, "ca");
  await issueHost({ caDir: ca, host: "client", role: "operator", outDir: join(root, "client") });
  const dir = defaultClientIdentityDir();
  let mine = true;
  try {
    Deno.statSync(join(dir, "host.crt"));
    mine = existsSync(join(dir, OURS));
  } catch {
    // No identity there yet.
  }
  if (!mine) {
    say(
      `kept the client identity in ${dir}; for this cluster use DCRES_CERT=${root}/client/host.crt ` +
        `DCRES_KEY=${root}/client/host.key DCRES_CA=${root}/client/ca.crt`,
    );
    return join(root, "client");
  }
  await issueHost({ caDir: ca, host: "client", role: "operator", outDir: dir, force: true });
  Deno.writeTextFileSync(join(dir, OURS), "");
  return dir;
}

/** Membership flags of `up`: every other agent as a peer, and zone labels handed round. */
interface UpOptions {
  peers: boolean;
  zones: string[];
}

async function up(n: number, o: UpOptions) {
  if (!Number.isInteger(n) || n < 1 || n > 200) throw new Error(`up N: N must be 1..200, got ${n}`);
  if (nodes().length) await down();
  Deno.mkdirSync(root, { recursive: true, mode: 0o700 });
  await initCa(join(root, "ca"), { force: true });
  const client = await issueClient();
  const out: Array<{ name: string; addr: string }> = [];
  for (let i = 1; i <= n; i++) {
    const name = `node${i}`;
    Deno.mkdirSync(join(root, name), { recursive: true, mode: 0o700 });
    await issueHost({
      caDir: join(root, "ca"),
      host: name,
      ips: [ipOf(name)],
      outDir: join(root, name, "identity"),
      force: true,
    });
    out.push({ name, addr: `${ipOf(name)}:${PORT}` });
  }
  // Kept with each node, so `start NAME` starts it again as it was.
  out.forEach(({ name }, i) => {
    const peers = out.filter((p) => p.name !== name).map((p) => p.addr).join(",");
    const args = [
      ...(o.peers ? ["--peers", peers] : []),
      ...(o.zones.length ? ["--zone", o.zones[i % o.zones.length]] : []),
    ];
    Deno.writeTextFileSync(join(root, name, "agent-args.json"), JSON.stringify(args));
  });
  await Promise.all(out.map(({ name }) => start(name)));
  say(`${n} agent(s) up; client identity in ${client}`);
  console.log(JSON.stringify(out));
}

function ipOf(name: string): string {
  return `127.0.0.${Number(name.slice(4)) + 1}`;
}

/**
 * The cluster's guest directory: copies of this host's newest kernel and of the repo's initramfs,
 * the only guest files its agents will load (copies, as a symlink out of the directory is refused).
 */
function guestDir(): string {
  const dir = join(root, "guests");
  Deno.mkdirSync(dir, { recursive: true });
  const kernel = findGuestKernel();
  const initrd = new URL("../target/guest/initramfs.cpio.gz", import.meta.url).pathname;
  for (const src of kernel ? [kernel, initrd] : [initrd]) {
    const to = join(dir, basename(src));
    try {
      Deno.statSync(to);
    } catch {
      try {
        Deno.copyFileSync(src, to);
      } catch {
        // Not there (no kernel installed, no initramfs built): Linux guests cannot start here.
      }
    }
  }
  return dir;
}

/** The membership flags `up` gave node `name`. */
function extraArgs(name: string): string[] {
  try {
    return JSON.parse(Deno.readTextFileSync(join(root, name, "agent-args.json")));
  } catch {
    return [];
  }
}

/** Starts the agent of `name` on its address, data and identity; resolves once it is ready. */
async function start(name: string) {
  const dir = join(root, name);
  const log = join(dir, "agent.log");
  const readyLines = () => {
    try {
      return Deno.readTextFileSync(log).split('"ready":true').length - 1;
    } catch {
      return 0; // the shell has not created the log yet
    }
  };
  const before = readyLines();
  const self = selfCommand([
    "agent",
    "--listen",
    `${ipOf(name)}:${PORT}`,
    "--data-dir",
    join(dir, "data"),
    "--identity",
    join(dir, "identity"),
    "--guest-dir",
    guestDir(),
    ...extraArgs(name),
    // A test's settings for this agent (e.g. a store quota), when it wrote them.
    ...(existsSync(join(dir, "agent.json")) ? ["--config", join(dir, "agent.json")] : []),
    // Extra agent flags for every host (a test's background scrub, say), split at spaces.
    ...(Deno.env.get("DCRES_CLUSTER_AGENT_FLAGS") ?? "").split(" ").filter(Boolean),
  ]);
  const child = spawnDetached(self, log);
  Deno.writeTextFileSync(join(dir, "agent.pid"), String(child.pid));
  const deadline = performance.now() + 30_000;
  while (readyLines() === before) {
    if (performance.now() > deadline) throw new Error(`${name} did not start; see ${log}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** A host failure: SIGKILL to the agent of `name` and to every VM it runs; its data stays. */
async function kill(name: string) {
  const run = join(root, name, "data", "run");
  for (const v of await listVms(run).catch(() => [])) {
    try {
      Deno.kill(v.pid, "SIGKILL");
    } catch {
      // Already gone.
    }
  }
  try {
    Deno.kill(Number(Deno.readTextFileSync(join(root, name, "agent.pid"))), "SIGKILL");
  } catch (e) {
    // Killed twice (a test's fault, then DCRES_KEEP_CLUSTER's clean-up) is still a dead host.
    if (!(e instanceof Deno.errors.NotFound)) throw e;
    say(`${name} was not running`);
    return;
  }
  say(`${name} killed`);
}

function known(name: string | undefined): string {
  if (!name || !nodes().includes(name)) {
    throw new Error(`no agent "${name ?? ""}" in ${root}; the agents are: ${nodes().join(", ")}`);
  }
  return name;
}

async function down() {
  for (const name of nodes()) {
    const dir = join(root, name);
    for (const v of await listVms(join(dir, "data", "run"))) {
      await request(join(dir, "data", "run"), v.name, { op: "stop" }).catch(() => {});
    }
    try {
      const pid = Number(Deno.readTextFileSync(join(dir, "agent.pid")));
      Deno.kill(pid, "SIGTERM");
    } catch {
      // Not running.
    }
    say(`${name} stopped`);
  }
  Deno.removeSync(root, { recursive: true });
}

const [cmd, arg, ...rest] = Deno.args;
try {
  if (cmd === "up") {
    const z = rest.indexOf("--zones");
    await up(Number(arg ?? 3), {
      peers: rest.includes("--peers"),
      zones: z >= 0 ? (rest[z + 1] ?? "").split(",").filter(Boolean) : [],
    });
  } else if (cmd === "down") await down();
  else if (cmd === "kill") await kill(known(arg));
  else if (cmd === "start") await start(known(arg));
  else {throw new Error(
      "usage: scripts/cluster up N [--peers] [--zones A,B,...] | down | kill NAME | start NAME",
    );}
} catch (e) {
  console.error(`cluster: ${(e as Error).message}`);
  Deno.exit(1);
}
Deno.exit(0);
