/** `dcres guest verify NAME`: the memstamp guest checks every page and names the first bad one. */
import { request } from "../vmm/control/client.ts";
import { agentAddr, remoteCall } from "./remote.ts";
import type { VerifyResult } from "../vmm/guests/memstamp/memstamp.ts";
import { EXIT, type GlobalOptions, report, stateDirOf } from "./context.ts";
import { PAGE_SIZE } from "../accel/accel.ts";

/** Runs the verification; exit 1 when a page is bad. */
export async function guestVerify(
  g: GlobalOptions,
  name: string,
  timeoutMs?: number,
): Promise<number> {
  const r = agentAddr(g)
    ? await remoteCall<VerifyResult>(g, "guest.verify", { name, timeoutMs })
    : await request<VerifyResult>(stateDirOf(g), name, { op: "verify", timeoutMs });
  report(
    g,
    { name, ...r },
    () =>
      r.ok
        ? `OK: ${name}: all ${r.pages} pages verified`
        : `BAD: ${name}: page gfn ${r.bad!.gfn} (0x${(r.bad!.gfn * PAGE_SIZE).toString(16)}) is ${
          r.bad!.reason
        }: expected ${r.bad!.expected}, found ${r.bad!.found}`,
  );
  return r.ok ? EXIT.OK : EXIT.FAILURE;
}
