/**
 * Installing pages into guest memory registered with userfaultfd: one UFFDIO_COPY or
 * UFFDIO_ZEROPAGE per run of consecutive pages, page by page where a racing install got there first.
 */
import { installRun, type Userfaultfd } from "../ffi/uffd.ts";
import { indexRuns } from "./runs.ts";
import { PAGE_SIZE } from "../accel/accel.ts";

/** Installs `gfns` into memory mapped at `base` from the buffer at `src`, page k of it for gfns[k]. */
export function copyPages(uffd: Userfaultfd, base: bigint, gfns: number[], src: bigint): void {
  for (const [i, n] of indexRuns(gfns)) {
    installRun(
      base,
      PAGE_SIZE,
      gfns.slice(i, i + n),
      (dst, len, at) => uffd.copy(dst, src + BigInt((i + at) * PAGE_SIZE), len),
    );
  }
}

/** Installs `gfns` into memory mapped at `base` as zero pages. */
export function zeroPages(uffd: Userfaultfd, base: bigint, gfns: number[]): void {
  for (const [i, n] of indexRuns(gfns)) {
    installRun(base, PAGE_SIZE, gfns.slice(i, i + n), (dst, len) => uffd.zeropage(dst, len));
  }
}
