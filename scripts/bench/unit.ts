/** The agent's systemd unit as `systemd-analyze security` rates it, for the benchmark's report. */

/** The unit's overall exposure (0 safest, 10 least safe), or undefined where systemd-analyze is missing. */
export async function unitExposure(): Promise<number | undefined> {
  const unit = new URL("../../contrib/systemd/dcres-agent.service", import.meta.url).pathname;
  try {
    const r = await new Deno.Command("systemd-analyze", {
      args: ["security", "--offline=true", unit],
      stdout: "piped",
      stderr: "null",
    }).output();
    const m = /Overall exposure level for [^:]+: (\d+\.\d+)/.exec(
      new TextDecoder().decode(r.stdout),
    );
    return m ? Number(m[1]) : undefined;
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return undefined;
    throw e;
  }
}
