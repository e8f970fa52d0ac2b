/**
 * Builds the emulated CPU's C shim once per host with the system's gcc, into a root-only cache
 * directory, named by a hash of its source so an upgraded dcres never loads a stale one.
 */
import { existsSync } from "node:fs";
import { createHash } from "node:crypto";
import { AccelUnavailableError } from "../accel.ts";

const SOURCE = new URL("./shim.c", import.meta.url);
const HEADER = "/usr/include/unicorn/unicorn.h";

/** The directory the shim is cached in: `DCRES_CACHE_DIR`, else `$XDG_CACHE_HOME/dcres`. */
export function shimCacheDir(): string {
  const explicit = Deno.env.get("DCRES_CACHE_DIR");
  if (explicit) return explicit;
  const xdg = Deno.env.get("XDG_CACHE_HOME") ??
    `${Deno.env.get("HOME") ?? "/var/cache"}/.cache`;
  return `${xdg}/dcres`;
}

function removeQuietly(path: string): void {
  try {
    Deno.removeSync(path);
  } catch {
    // Already renamed into place, or never written.
  }
}

/**
 * Refuses a shim or cache directory another user could have replaced: dcres runs as root and
 * loads the shim into its own process.
 */
function checkPrivate(path: string): void {
  const st = Deno.lstatSync(path);
  const uid = Deno.uid();
  if ((uid !== null && st.uid !== uid) || (st.mode ?? 0) & 0o022 || st.isSymlink) {
    throw new AccelUnavailableError(
      `${path} is not private to this user (owner, group/other write or a symlink); remove it so dcres rebuilds the emulated CPU's shim, or set DCRES_CACHE_DIR to a private directory`,
    );
  }
}

/** The path of the built shim, building it first if needed; one-line errors name the package. */
export function ensureEmuShim(): string {
  const source = Deno.readFileSync(SOURCE);
  const dir = shimCacheDir();
  const path = `${dir}/libdcres_emu-${
    createHash("sha256").update(source).digest("hex").slice(0, 16)
  }.so`;
  if (existsSync(path)) {
    checkPrivate(dir);
    checkPrivate(path);
    return path;
  }
  if (!existsSync(HEADER)) {
    throw new AccelUnavailableError(
      `the emulated CPU's shim needs ${HEADER}; install Debian's libunicorn-dev (apt-get install libunicorn-dev), or run scripts/ensure-packages.sh`,
    );
  }
  Deno.mkdirSync(dir, { recursive: true, mode: 0o700 });
  checkPrivate(dir);
  const src = `${dir}/shim-${crypto.randomUUID()}.c`;
  const tmp = `${path}.${crypto.randomUUID()}.tmp`;
  Deno.writeFileSync(src, source, { mode: 0o600 });
  try {
    let out: Deno.CommandOutput;
    try {
      out = new Deno.Command("gcc", {
        args: ["-O2", "-Wall", "-shared", "-fPIC", "-o", tmp, src, "-lunicorn"],
        stdout: "piped",
        stderr: "piped",
      }).outputSync();
    } catch (e) {
      throw new AccelUnavailableError(
        `the emulated CPU's shim needs gcc (${(e as Error).message}); install Debian's gcc`,
      );
    }
    if (!out.success) {
      const why = new TextDecoder().decode(out.stderr).trim().split("\n")[0];
      throw new AccelUnavailableError(
        `building the emulated CPU's shim failed: ${why}; check that libunicorn-dev is installed`,
      );
    }
    Deno.chmodSync(tmp, 0o700);
    Deno.renameSync(tmp, path);
  } finally {
    for (const f of [src, tmp]) removeQuietly(f);
  }
  return path;
}
