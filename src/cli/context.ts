/** Options every command shares, and the one-line error / exit-code convention. */
import { defaultStateDir } from "../vmm/control/client.ts";
import { toJson } from "../vmm/control/protocol.ts";

/** Global options. */
export interface GlobalOptions {
  /** Print one machine-readable JSON report instead of human output. */
  json?: boolean;
  /** Directory of VM control sockets. */
  stateDir?: string;
  /** Agent to talk to, HOST:PORT. */
  agent?: string;
  /** Client certificate file. */
  cert?: string;
  /** Client key file. */
  key?: string;
  /** Cluster CA certificate file. */
  ca?: string;
}

/** Exit codes. */
export const EXIT = { OK: 0, FAILURE: 1, USAGE: 2 } as const;

/** A command failed in a way that is already explained; carries its exit code. */
export class CommandFailed extends Error {
  constructor(message: string, readonly code: number = EXIT.FAILURE) {
    super(message);
    this.name = "CommandFailed";
  }
}

/** The effective state directory. */
export function stateDirOf(g: GlobalOptions): string {
  return g.stateDir ?? defaultStateDir();
}

/** Prints a result: JSON with --json, else the human text. */
export function report(g: GlobalOptions, value: unknown, human: () => string): void {
  console.log(g.json ? toJson(value) : human());
}

/** True when stderr is a terminal and --json is off: progress may be drawn. */
export function showProgress(g: GlobalOptions): boolean {
  return !g.json && Deno.stderr.isTerminal();
}
