/**
 * Copies of a split VM's checkpoint fragments (docs/FORMAT.md 3.1, `copies`): each participant's
 * fragment is streamed, while it is written, to the next R-1 participants round the ring (main,
 * then the sub-hosts in order), so no two copies of a fragment share a host and every host holds
 * as many copies of others' fragments as it wrote itself.
 */
import { MAX_COPIES } from "../ckpt/manifest.ts";

/** A host a copy goes to. */
export interface ReplicaHost {
  /** Its name in the manifest. */
  host: string;
  /** Its agent's address. */
  addr: string;
}

/** A fragment copy's placement could not be made; the checkpoint is refused before it starts. */
export class ReplicaPlacementError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "ReplicaPlacementError";
  }
}

/**
 * For each of `n` participants (0 being main), the participants holding copies of its fragment:
 * the `replicas - 1` after it round the ring. Refused when there are fewer hosts than copies.
 */
export function ringPlacement(n: number, replicas: number): number[][] {
  if (!Number.isSafeInteger(replicas) || replicas < 1 || replicas > MAX_COPIES + 1) {
    throw new ReplicaPlacementError(
      `--replicas ${replicas}: give a whole number from 1 to ${MAX_COPIES + 1}`,
    );
  }
  if (replicas > n) {
    throw new ReplicaPlacementError(
      `--replicas ${replicas}: this VM's checkpoint has ${n} host${
        n === 1 ? "" : "s"
      }, and no two copies of a fragment may share one; ask for at most ${n}`,
    );
  }
  return Array.from(
    { length: n },
    (_, k) => Array.from({ length: replicas - 1 }, (_, j) => (k + 1 + j) % n),
  );
}
