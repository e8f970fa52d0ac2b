/** Runs the dcres CLI as a separate process, the way an operator or a script does. */
import { selfCommand } from "../../src/agent/spawn.ts";

/** Exit code and output of one CLI run. */
export interface CliResult {
  /** Exit code. */
  code: number;
  /** Standard output. */
  stdout: string;
  /** Standard error. */
  stderr: string;
}

/** Runs `dcres ARGS` with `env`, optionally prefixed by a wrapper command (e.g. setpriv). */
export async function dcres(
  args: string[],
  opts: { env?: Record<string, string>; wrap?: string[]; timeoutMs?: number } = {},
): Promise<CliResult> {
  const self = selfCommand(args);
  const argv = [...(opts.wrap ?? []), self.cmd, ...self.args];
  const child = new Deno.Command(argv[0], {
    args: argv.slice(1),
    env: opts.env,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const timer = setTimeout(() => child.kill("SIGKILL"), opts.timeoutMs ?? 60_000);
  const out = await child.output();
  clearTimeout(timer);
  const dec = new TextDecoder();
  return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
}

/** A fresh state directory for one test. */
export function tempStateDir(): string {
  return Deno.makeTempDirSync({ prefix: "dcres-state-" });
}
