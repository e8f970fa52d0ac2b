/** dcres CLI entry: parse, dispatch, one-line errors, exit codes. */
import { Command, CommanderError, Option } from "commander";
import { configure, dispose, getStreamSink, jsonLinesFormatter } from "@logtape/logtape";
import { CommandFailed, EXIT, type GlobalOptions } from "./src/cli/context.ts";
import { runCommand, type RunFlags } from "./src/cli/run.ts";
import { vmmCommand, type VmmFlags } from "./src/cli/vmm.ts";
import { vmCheck, vmControl, vmLs } from "./src/cli/vm.ts";
import { guestVerify } from "./src/cli/guest.ts";
import { consoleCommand } from "./src/cli/console.ts";
import { migrateCommand, type MigrateFlags } from "./src/cli/migrate.ts";
import { demoCommand } from "./src/cli/demo.ts";
import { agentCommand, type AgentFlags } from "./src/cli/agent.ts";
import { AGENT_FILE_KEYS } from "./src/cli/agent_config.ts";
import { coordCommand, type CoordFlags, coordStatusCommand } from "./src/cli/coord.ts";
import { policyLs, policyRm, policySet, type PolicySetFlags } from "./src/cli/coord_policy.ts";
import { statusCommand } from "./src/cli/status.ts";
import { parseDuration, UsageError } from "./src/cli/units.ts";
import { checkpointCommand, type CheckpointFlags } from "./src/cli/checkpoint.ts";
import { restoreCommand, type RestoreFlags } from "./src/cli/restore.ts";
import {
  ckptInspect,
  ckptLs,
  ckptMerge,
  ckptRepair,
  ckptScrub,
  ckptVerify,
} from "./src/cli/ckpt.ts";
import { ckptGc } from "./src/cli/gc.ts";
import { caInit, type CaInitFlags, caIssue, type CaIssueFlags, collect } from "./src/cli/ca.ts";
import { caRevoke, type CaRevokeFlags } from "./src/cli/ca_revoke.ts";
import { ACCEL_HELP } from "./src/cli/accel_flag.ts";
import { DCRES_VERSION } from "./src/ckpt/format.ts";
import { DEFAULT_CHECKPOINT_MODE } from "./src/ckpt/manifest.ts";
import { DEFAULT_MAX_DOWNTIME_MS } from "./src/ckpt/transaction.ts";

/** Levels `--log-level` takes. */
const LOG_LEVELS = ["debug", "info", "warning", "error"] as const;

/** A level `--log-level` takes. */
export type LogLevel = (typeof LOG_LEVELS)[number];

/** Sends dcres's log records at `level` and above to stderr as JSON lines. */
async function configureLogging(level: LogLevel): Promise<void> {
  await configure({
    sinks: { stderr: getStreamSink(Deno.stderr.writable, { formatter: jsonLinesFormatter }) },
    loggers: [
      { category: ["dcres"], lowestLevel: level, sinks: ["stderr"] },
      { category: ["logtape", "meta"], lowestLevel: "error", sinks: ["stderr"] },
    ],
  });
}

/**
 * The level a command logs at: the long-running processes (the top-level `vmm`, `agent`, `coord`
 * commands) log info and up, for their log files; any other command what --log-level says.
 */
function logLevelOf(action: Command, level: LogLevel): LogLevel {
  const topLevel = action.parent !== null && action.parent.parent === null;
  return topLevel && ["vmm", "agent", "coord"].includes(action.name()) ? "info" : level;
}

/** Options every command that starts a VM takes. */
function machineOptions(c: Command): Command {
  return c
    .option("--mem <size>", "guest RAM, e.g. 256M or 1G", "256M")
    .option("--vcpus <n>", "number of vCPUs", "1")
    .option("--name <name>", "VM name (default: guest kind and a random suffix)")
    .option("--accel <kind>", ACCEL_HELP)
    .option("--for <duration>", "stop after this long, e.g. 30s")
    .option("--ws <size>", "memstamp: working set per vCPU (default: its whole share)")
    .option("--pattern <p>", "memstamp: seq, random or hotcold (default random)")
    .option("--stride <pages>", "memstamp: page stride of the working set (spread)")
    .option("--delay <n>", "memstamp: busy-loop iterations between page writes")
    .option("--timer-hz <hz>", "memstamp: LAPIC timer frequency (0: off)");
}

/**
 * The dcres command line; `exit` receives a command's exit code, `logAt` the level its logging
 * starts at, before the command runs.
 */
export function program(
  exit: (code: number) => void,
  logAt: (level: LogLevel) => Promise<void> = configureLogging,
): Command {
  const p = new Command("dcres")
    .description(
      "KVM VMs with memory split across hosts; parallel, consistent, live checkpoint and restore",
    )
    .version(DCRES_VERSION)
    .option("--json", "print one JSON report instead of human output")
    .option(
      "--state-dir <dir>",
      "directory of VM control sockets (default $XDG_RUNTIME_DIR/dcres or /run/dcres)",
    )
    .addOption(
      new Option("--log-level <level>", "debug, info, warning or error")
        .choices(LOG_LEVELS)
        .default("warning"),
    )
    .option(
      "--agent <addr>",
      "talk to the agent at HOST:PORT (or $DCRES_AGENT) instead of local VMs",
    )
    .option("--cert <file>", "client certificate for --agent (or $DCRES_CERT)")
    .option("--key <file>", "client key for --agent (or $DCRES_KEY)")
    .option("--ca <file>", "cluster CA certificate for --agent (or $DCRES_CA)")
    .enablePositionalOptions()
    .exitOverride()
    .configureOutput({ writeErr: (s) => Deno.stderr.writeSync(new TextEncoder().encode(s)) })
    .hook("preAction", (_p, action) => logAt(logLevelOf(action, p.opts().logLevel)));
  const g = (): GlobalOptions => p.opts();
  const act = <A extends unknown[]>(fn: (...a: A) => Promise<number>) => async (...a: A) =>
    exit(await fn(...a));

  machineOptions(
    p.command("run")
      .description("run a VM: in the foreground with its console on this terminal, or --detach")
      .option("--detach", "run as its own dcres vmm process and return")
      .option(
        "--exec <cmd>",
        "linux: run CMD in the guest shell, print its output, exit with its status",
      )
      .addOption(new Option("--guest <kind>", "memstamp or linux").default("memstamp"))
      .option("--kernel <file>", "linux: bzImage (default: newest /boot/vmlinuz-*)")
      .option("--initrd <file>", "linux: initramfs (default: target/guest/initramfs.cpio.gz)")
      .option("--cmdline <text>", "linux: kernel command line"),
  )
    .action(act((f: RunFlags) => runCommand(g(), f)));

  p.command("vmm", { hidden: true })
    .requiredOption("--spec <json>")
    .option("--for-ms <ms>")
    .option("--restore <dir>")
    .option("--lazy")
    .option("--split <json>")
    .option("--accel <kind>")
    .action(act((f: VmmFlags) => vmmCommand(g(), f)));

  p.command("agent")
    .description("run the per-host agent (QUIC RPC with mutual authentication, VM supervision)")
    .option(
      "--config <file>",
      `JSON settings, each flag overriding its key: ${AGENT_FILE_KEYS.join(", ")}`,
    )
    .option("--listen <addr>", "QUIC address HOST:PORT (default 127.0.0.1:7400)")
    .option("--data-dir <dir>", "VM sockets, logs and checkpoints (default /var/lib/dcres)")
    .option("--identity <dir>", "host.crt, host.key, ca.crt (default /etc/dcres/identity)")
    .option("--metrics-port <port>", "serve Prometheus /metrics on 127.0.0.1:PORT (off by default)")
    .option(
      "--page-store <size>",
      "split VMs' pages this host may hold (default: half its free RAM)",
    )
    .option("--accel <kind>", `the VMs it starts, unless a request says: ${ACCEL_HELP}`)
    .option(
      "--guest-dir <dir>",
      "the only place Linux guests' kernels and initrds are read from (default /var/lib/dcres/guests)",
    )
    .option(
      "--peers <addrs>",
      "the cluster's other agents (HOST:PORT,...): where checkpoint copies may go",
    )
    .option("--zone <label>", "this host's zone: copies of checkpoints go to other zones first")
    .option(
      "--replicas <n>",
      "copies of every checkpoint fragment unless the request says (default 2 with other hosts)",
    )
    .option(
      "--scrub-rate <size/s>",
      "re-read stored checkpoint copies in the background at this rate, e.g. 32M, or off (default)",
    )
    .option("--scrub-every <duration>", "start a background scrub pass this often (default 24h)")
    .option(
      "--coordinator <file>",
      "also run the coordinator of this config in the same process (docs/COORDINATOR.md)",
    )
    .action(act((f: AgentFlags) => agentCommand(g(), f)));

  const coord = p.command("coord")
    .description("run the coordinator: heartbeats, host leases and states (docs/COORDINATOR.md)")
    // Not a required option: commander would demand it of `coord status` too, before its own.
    .option("--config <file>", "JSON: agents, identityDir, store, timings, lease terms (required)")
    .action(act((f: CoordFlags) => coordCommand(g(), f)));
  coord.command("status")
    .description("hosts, their leases and VMs, and recent events, from the coordinator's store")
    .requiredOption("--config <file>", "the coordinator's config (its agents and store)")
    .action(act((f: Required<CoordFlags>) => coordStatusCommand(g(), f)));
  const policy = coord.command("policy")
    .description("VMs' checkpoint policies in the coordinator's store (running or not)");
  policy.command("set <vm>")
    .description("set or change a VM's policy; flags left out keep their value (or the default)")
    .requiredOption("--config <file>", "the coordinator's config (its store)")
    .option("--every <duration>", "time between checkpoints, e.g. 60s (required for a new policy)")
    .option("--mode <mode>", "stop, precopy or cow (default cow)")
    .option("--incremental", "save only what changed since the previous checkpoint")
    .option("--no-incremental", "every checkpoint full (the default)")
    .option("--full-every <n>", "with --incremental, one checkpoint in n is full (0: never)")
    .option("--keep <n>", "generations kept (default 10)")
    .option("--replicas <n>", "copies of every fragment (default 2)")
    .action(act((vm: string, f: PolicySetFlags) => policySet(g(), vm, f)));
  policy.command("ls")
    .description("every VM's policy and recovery point")
    .requiredOption("--config <file>", "the coordinator's config (its store)")
    .action(act((f: { config: string }) => policyLs(g(), f)));
  policy.command("rm <vm>")
    .description("remove a VM's policy (its checkpoints stay)")
    .requiredOption("--config <file>", "the coordinator's config (its store)")
    .action(act((vm: string, f: { config: string }) => policyRm(g(), vm, f)));

  p.command("status")
    .description("this agent's VMs, checkpoints, disk use and peers (local agent, or --agent)")
    .option("--data-dir <dir>", "the local agent's data directory", "/var/lib/dcres")
    .action(act((f: { dataDir: string }) => statusCommand(g(), f)));

  const vm = p.command("vm").description("manage running VMs");
  machineOptions(
    vm.command("start")
      .description("start a VM in the background (on --agent, or locally as its own process)")
      .addOption(new Option("--guest <kind>", "memstamp or linux").default("memstamp"))
      .option("--main <addr>", "split VM: the agent (HOST:PORT) that runs its vCPUs")
      .option("--sub <addrs>", "split VM: agents holding the rest of its memory, comma-separated")
      .option("--main-mem <size>", "split VM: most guest memory the main host keeps resident"),
  )
    .action(act((f: RunFlags) => runCommand(g(), { ...f, detach: true })));
  vm.command("ls").description("list running VMs").action(act(() => vmLs(g())));
  vm.command("check <name>")
    .description("split VM: check that every page has exactly one holder across its hosts")
    .action(act((name: string) => vmCheck(g(), name)));
  for (const op of ["stop", "pause", "resume"] as const) {
    vm.command(`${op} <name>`).description(`${op} a VM`).action(
      act((name: string) => vmControl(g(), op, name)),
    );
  }

  p.command("migrate <name>")
    .description(
      "split a running VM over sub-hosts (--main A --sub B,C --main-mem SIZE; A runs it), or gather it (--to A)",
    )
    .option("--main <addr>", "the agent running the VM; it keeps the hottest memory")
    .option("--sub <addrs>", "agents to hold the rest of its memory, comma-separated")
    .option("--main-mem <size>", "most guest memory the main host keeps resident")
    .option("--to <addr>", "gather a split VM onto its main host")
    .option(
      "--move-sub <old=new>",
      "move one sub-host's pages to another host (HOST:PORT=HOST:PORT)",
    )
    .action(act((name: string, f: MigrateFlags) => migrateCommand(g(), name, f)));

  p.command("console <name>")
    .description("attach to a VM's serial console (Ctrl-] leaves), or --exec one command")
    .option("--exec <cmd>", "run CMD in the guest shell and print its output")
    .option("--timeout <duration>", "how long --exec may take", "30s")
    .action(
      act((name: string, f: { exec?: string; timeout: string }) =>
        consoleCommand(g(), name, {
          exec: f.exec,
          timeoutMs: parseDuration("--timeout", f.timeout),
        })
      ),
    );

  p.command("guest").description("talk to the guest").command("verify <name>")
    .description("memstamp: verify every page; prints OK or the first bad page")
    .option("--timeout <duration>", "how long verification may take", "120s")
    .action(
      act((name: string, f: { timeout: string }) =>
        guestVerify(g(), name, parseDuration("--timeout", f.timeout))
      ),
    );

  p.command("checkpoint <name>")
    .description("checkpoint a running VM into a store directory")
    .option(
      "--out <dir>",
      "checkpoint store directory (generations g000001, ...); with --agent, on that host",
    )
    .option("--mode <mode>", "stop, precopy or cow", DEFAULT_CHECKPOINT_MODE)
    .option("--incremental", "save only pages written since the previous checkpoint in --out")
    .option("--compress <alg>", "compress chunks (zstd)")
    .option(
      "--max-downtime <duration>",
      "precopy: pause target for the final round",
      `${DEFAULT_MAX_DOWNTIME_MS}ms`,
    )
    .option(
      "--traditional",
      "split VM: pause, pull every page to the main host, save as one host (with --mode stop)",
    )
    .option(
      "--replicas <n>",
      "copies of every fragment, each on another host (a split VM's or the agent's peers), streamed while written; default: the agent's policy, else 2 where there are other hosts",
    )
    .option(
      "--keep <n>",
      "once it commits, keep the newest checkpoints whose generations number at most N (every host)",
    )
    .action(act((name: string, f: CheckpointFlags) => checkpointCommand(g(), name, f)));

  p.command("restore <checkpoint>")
    .description(
      "restore a checkpoint (a store: its latest generation; a generation directory; through an agent, an id)",
    )
    .option("--name <name>", "name of the restored VM (default: the checkpoint's)")
    .option("--lazy", "resume at once and load memory on demand")
    .option("--single <addr>", "split checkpoint: restore it all onto this one agent")
    .option("--main <addr>", "split checkpoint: restore it split, with this main host")
    .option("--sub <addrs>", "split checkpoint: the sub-hosts (HOST:PORT,...), with --main")
    .option(
      "--map <old=new>",
      "split checkpoint: NEW takes OLD's part; repeat for several",
      collect,
    )
    .option("--detach", "run the restored VM as its own dcres vmm process")
    .option("--for <duration>", "stop after this long")
    .option(
      "--accel <kind>",
      `restore on this one, whichever the checkpoint was taken on: ${ACCEL_HELP}`,
    )
    .action(act((dir: string, f: RestoreFlags) => restoreCommand(g(), dir, f)));

  const ckpt = p.command("ckpt").description("inspect and maintain checkpoint stores");
  ckpt.command("ls <dir>").description("list generations").action(
    act((d: string) => ckptLs(g(), d)),
  );
  ckpt.command("inspect <dir>").description("show a checkpoint").action(
    act((d: string) => ckptInspect(g(), d)),
  );
  ckpt.command("verify <dir>").description("check every checksum").action(
    act((d: string) => ckptVerify(g(), d)),
  );
  ckpt.command("merge <dir>").description("squash the latest chain into one full generation")
    .option("--keep <n>", "then keep at most N generations (default: every checkpoint)")
    .action(act((d: string, f: { keep?: string }) => ckptMerge(g(), d, f)));
  ckpt.command("gc [store]")
    .description(
      "remove generations no kept checkpoint references, on every host holding copies (through --agent: all its stores by default)",
    )
    .option("--keep <n>", "keep at most N generations (default: every checkpoint)")
    .action(act((d: string | undefined, f: { keep?: string }) => ckptGc(g(), d, f)));
  ckpt.command("repair <checkpoint>")
    .description("push every missing copy of a checkpoint's fragments back from a whole one")
    .action(act((d: string) => ckptRepair(g(), d)));
  ckpt.command("scrub")
    .description(
      "re-read every fragment copy on --agent; replace each damaged one from a whole copy",
    )
    .option("--store <store>", "only this store (a VM's name)")
    .action(act((f: { store?: string }) => ckptScrub(g(), f.store)));

  const ca = p.command("ca").description("cluster CA and host certificates for mutual TLS");
  ca.command("init")
    .description("make a cluster CA: ECDSA P-256 key and self-signed certificate, valid 10 years")
    .requiredOption("--dir <dir>", "directory for ca.crt and ca.key (made 0700)")
    .option("--force", "replace an existing CA in --dir")
    .action(act((f: CaInitFlags) => caInit(g(), f)));
  ca.command("issue")
    .description("issue a host certificate (TLS server and client) signed by the cluster CA")
    .requiredOption("--ca <dir>", "CA directory made by ca init")
    .requiredOption("--host <name>", "host name: the certificate's CN and DNS subjectAltName")
    .option("--ip <addr>", "IP subjectAltName; repeat for several", collect)
    .option("--days <n>", "validity in days", "825")
    .option("--role <role>", "what the certificate may do: agent, operator or coordinator", "agent")
    .requiredOption("--out <dir>", "directory for host.crt, host.key and ca.crt (made 0700)")
    .option("--force", "replace an existing host identity in --out")
    .action(act((f: CaIssueFlags) => caIssue(g(), f)));
  ca.command("revoke")
    .description("revoke a host certificate: add its serial to the CA's CRL (ca.crl beside ca.crt)")
    .requiredOption("--ca <dir>", "CA directory made by ca init")
    .option("--serial <hex>", "serial number to revoke (dcres ca issue prints it)")
    .option("--cert <file>", "or the certificate whose serial to revoke")
    .action(act((f: CaRevokeFlags) => caRevoke(g(), f)));

  p.command("demo")
    .description(
      "run the built-in memstamp guest through pause/resume and a state move, then verify it",
    )
    .option("--mem <size>", "guest RAM", "512M")
    .option("--vcpus <n>", "vCPUs", "2")
    .option("--out <dir>", "keep the checkpoint store here (default: a temporary directory)")
    .option("--accel <kind>", ACCEL_HELP)
    .action(
      act((f: { mem: string; vcpus: string; out?: string; accel?: string }) => demoCommand(g(), f)),
    );
  return p;
}

async function main(argv: string[]): Promise<number> {
  let code: number = EXIT.OK;
  const p = program((c) => (code = c));
  try {
    await p.parseAsync(argv, { from: "user" });
    return code;
  } catch (e) {
    if (e instanceof CommanderError) return e.exitCode === 0 ? EXIT.OK : EXIT.USAGE;
    if (e instanceof UsageError) {
      console.error(`dcres: ${e.message}`);
      return EXIT.USAGE;
    }
    console.error(`dcres: ${(e as Error).message}`);
    return e instanceof CommandFailed ? e.code : EXIT.FAILURE;
  }
}

if (import.meta.main) {
  const code = await main(Deno.args);
  // The log's stream sink writes in the background: its last lines (a daemon's "stopped") would be
  // lost to an exit that does not wait for them.
  await dispose();
  Deno.exit(code);
}
