/** Shared fixtures of the page store tests: distinct page contents and a temporary directory. */
import { PAGE_SIZE } from "../../src/accel/accel.ts";

/** Pages filled with a distinct byte pattern each, keyed by `tag`. */
export function pagesOf(tags: number[]): Uint8Array<ArrayBuffer> {
  const out = new Uint8Array(tags.length * PAGE_SIZE);
  tags.forEach((t, i) => {
    for (let o = 0; o < PAGE_SIZE; o++) out[i * PAGE_SIZE + o] = (t * 31 + o) & 0xff;
  });
  return out;
}

/** Runs `fn` with a fresh temporary directory, removed afterwards. */
export function withDir(fn: (dir: string) => void): void {
  const dir = Deno.makeTempDirSync({ prefix: "dcres-pages-" });
  try {
    fn(dir);
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
}
