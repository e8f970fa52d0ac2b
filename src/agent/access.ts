/**
 * Who may call each of the agent's methods over QUIC (docs/SECURITY.md, "Who may call what").
 * People and the coordinator run VMs and their checkpoints; only agents (a split VM's main host,
 * from the VMM it runs) move pages and save them on sub-hosts. A method missing here is refused to
 * every certificate; the agent's local socket is root's and is not checked.
 */
import type { AccessPolicy, Role } from "../rpc/roles.ts";

const ANYONE: readonly Role[] = ["agent", "operator", "coordinator"];
const PEOPLE: readonly Role[] = ["operator", "coordinator"];
const AGENTS: readonly Role[] = ["agent"];
/** Only the coordinator leases hosts: its heartbeat decides when their VMs must fence. */
const COORDINATOR: readonly Role[] = ["coordinator"];
/** A split VM's main host merges its chain on its sub-hosts; people merge and restore by hand. */
const AGENTS_AND_PEOPLE: readonly Role[] = ANYONE;

/** The roles that may call each agent method. */
export const AGENT_ACCESS: AccessPolicy = {
  health: ANYONE,
  status: PEOPLE,
  "vm.start": PEOPLE,
  "vm.stop": PEOPLE,
  "vm.pause": PEOPLE,
  "vm.resume": PEOPLE,
  "vm.ls": PEOPLE,
  "vm.check": PEOPLE,
  "vm.console": PEOPLE,
  "vm.exec": PEOPLE,
  "vm.split": PEOPLE,
  "vm.gather": PEOPLE,
  "vm.movesub": PEOPLE,
  "guest.verify": PEOPLE,
  checkpoint: PEOPLE,
  restore: PEOPLE,
  "ckpt.ls": PEOPLE,
  "ckpt.inspect": PEOPLE,
  "ckpt.verify": PEOPLE,
  "ckpt.plan": PEOPLE,
  /** An agent hears only what is missing, and sizes of files it holds (checked there). */
  "ckpt.have": ANYONE,
  "ckpt.get": PEOPLE,
  "ckpt.put": PEOPLE,
  "ckpt.push": PEOPLE,
  "ckpt.scrub": PEOPLE,
  "ckpt.receive": AGENTS,
  "ckpt.replicate": AGENTS,
  /** A holder pushes a fragment only to an agent its manifest names a holder (checked there). */
  "ckpt.pull": AGENTS,
  "ckpt.newest": AGENTS_AND_PEOPLE,
  "ckpt.merge.part": AGENTS_AND_PEOPLE,
  "ckpt.commit": AGENTS_AND_PEOPLE,
  "ckpt.abort": AGENTS_AND_PEOPLE,
  "ckpt.prune": AGENTS_AND_PEOPLE,
  "ckpt.gc": PEOPLE,
  "pages.load": PEOPLE,
  "pages.open": AGENTS,
  "pages.channel": AGENTS,
  "pages.held": AGENTS,
  /** The coordinator releases a failed main host's pages on its sub-hosts once it restored the VM. */
  "pages.drop": ["agent", "coordinator"],
  "pages.save.begin": AGENTS,
  "pages.save": AGENTS,
  "pages.save.owe": AGENTS,
  "pages.save.point": AGENTS,
  "pages.save.finish": AGENTS,
  "pages.save.commit": AGENTS,
  "pages.save.abort": AGENTS,
  "agent.lease": COORDINATOR,
};

/** Calls that last as long as their use (a split VM's page channel, a console), capped at a day, not an hour. */
export const AGENT_CHANNELS: Readonly<Record<string, number>> = {
  "pages.channel": 24 * 3600_000,
  "vm.console": 24 * 3600_000,
};
