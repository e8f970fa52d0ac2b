/** The flags that describe a split (`--main A --sub B,C --main-mem SIZE`), checked once for every command. */
import { checkAddress, parseSize, UsageError } from "./units.ts";

/** A split as the CLI asks for it. */
export interface SplitTarget {
  /** Agent running the vCPUs. */
  main: string;
  /** Agents holding the rest of the memory. */
  subs: string[];
  /** Most memory main keeps resident. */
  mainMemBytes: number;
}

/** Parses and checks the split flags; undefined when none is given. */
export function splitTarget(
  main: string | undefined,
  sub: string | undefined,
  mainMem: string | undefined,
): SplitTarget | undefined {
  if (!sub && !mainMem && !main) return undefined;
  if (!sub) throw new UsageError("--main and --main-mem need --sub HOST:PORT[,HOST:PORT...]");
  if (!mainMem) throw new UsageError("--sub needs --main-mem SIZE (memory the main host keeps)");
  if (!main) {
    throw new UsageError("--sub needs --main HOST:PORT (or --agent): the host running the vCPUs");
  }
  const subs = sub.split(",").map((a) => a.trim()).filter(Boolean);
  checkAddress("--main", main);
  for (const a of subs) checkAddress("--sub", a);
  if (subs.includes(main)) {
    throw new UsageError(`--sub ${main}: the main host cannot also be a sub-host`);
  }
  if (new Set(subs).size !== subs.length) {
    throw new UsageError(`--sub ${sub}: a host is named twice`);
  }
  return { main, subs, mainMemBytes: parseSize("--main-mem", mainMem) };
}
