/**
 * The Linux guest's userspace: a gzipped newc cpio archive (the format the kernel unpacks as
 * initramfs, Documentation/driver-api/early-userspace/buffer-format.rst) holding a static busybox,
 * its applet links, console device nodes and an /init that signals readiness and serves a shell on
 * the serial port. Written here rather than with cpio(1) so that building it needs no root (device
 * nodes are just headers) and no tools beyond busybox itself.
 */
import { gzipSync } from "node:zlib";

/** The line /init prints on the console once the guest can take commands. */
export const GUEST_READY_LINE = "DCRES-GUEST-READY";

/** The /init script: mount the kernel filesystems, say ready, then a shell on the serial port. */
export const INIT_SCRIPT = `#!/bin/sh
# dcres guest init. The VMM waits for the ready line, types commands into the shell on ttyS0
# followed by "echo DCRES-EXIT:$?", and ends the guest with "poweroff -f".
export PATH=/bin:/sbin:/usr/bin:/usr/sbin HOME=/root
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mkdir -p /dev/pts && mount -t devpts devpts /dev/pts 2>/dev/null
tty=/dev/ttyS0
[ -c "$tty" ] || tty=/dev/console
echo ${GUEST_READY_LINE}
# A session of its own with the serial port as controlling tty, so ^C reaches the command. When
# the shell ends, power off rather than let init exit, which would panic the kernel.
setsid -c sh <$tty >$tty 2>&1
poweroff -f
`;

/** What an archive entry is. */
export type CpioKind = "file" | "dir" | "symlink" | "chardev";

/** One entry of a newc archive. */
export interface CpioEntry {
  /** Path inside the archive, without a leading slash. */
  name: string;
  /** Entry kind; sets the S_IFMT bits of the mode. */
  kind: CpioKind;
  /** Permission bits, e.g. 0o755. */
  perm: number;
  /** File contents, or a symlink's target. */
  data?: Uint8Array | string;
  /** Device numbers of a character device. */
  rdev?: { major: number; minor: number };
}

const S_IFMT: Record<CpioKind, number> = {
  file: 0o100000,
  dir: 0o040000,
  symlink: 0o120000,
  chardev: 0o020000,
};
const NEWC_MAGIC = "070701";
const TRAILER = "TRAILER!!!";
const NEWC_ALIGN = 4;

/** Serializes entries as an uncompressed newc archive ending with the trailer. */
export function writeNewc(entries: readonly CpioEntry[]): Uint8Array {
  const enc = new TextEncoder();
  const parts: Uint8Array[] = [];
  let length = 0;
  const push = (b: Uint8Array) => {
    parts.push(b);
    length += b.length;
    const pad = (NEWC_ALIGN - (length % NEWC_ALIGN)) % NEWC_ALIGN;
    if (pad) {
      parts.push(new Uint8Array(pad));
      length += pad;
    }
  };
  const all = [...entries, { name: TRAILER, kind: "file" as const, perm: 0 }];
  all.forEach((e, i) => {
    const data = typeof e.data === "string" ? enc.encode(e.data) : e.data ?? new Uint8Array();
    const name = enc.encode(`${e.name}\0`);
    const isTrailer = e.name === TRAILER;
    // Header fields in order: ino mode uid gid nlink mtime filesize devmajor devminor rdevmajor
    // rdevminor namesize check. mtime 0 keeps the archive reproducible.
    const fields = [
      isTrailer ? 0 : i + 1,
      isTrailer ? 0 : S_IFMT[e.kind] | e.perm,
      0,
      0,
      e.kind === "dir" ? 2 : 1,
      0,
      data.length,
      0,
      0,
      e.rdev?.major ?? 0,
      e.rdev?.minor ?? 0,
      name.length,
      0,
    ];
    const header = NEWC_MAGIC + fields.map((f) => f.toString(16).padStart(8, "0")).join("");
    // Header and name are padded together to 4 bytes, then the data on its own.
    const head = new Uint8Array(header.length + name.length);
    head.set(enc.encode(header));
    head.set(name, header.length);
    push(head);
    if (data.length) push(data);
  });
  const out = new Uint8Array(length);
  let off = 0;
  for (const p of parts) {
    out.set(p, off);
    off += p.length;
  }
  return out;
}

/** Where Debian's busybox-static lives. */
export const DEFAULT_BUSYBOX = "/bin/busybox";

/** Builds the guest initramfs (gzipped newc cpio) around a static busybox. */
export async function buildInitramfs(opts: { busybox?: string } = {}): Promise<Uint8Array> {
  const busybox = opts.busybox ?? DEFAULT_BUSYBOX;
  let binary: Uint8Array;
  try {
    binary = await Deno.readFile(busybox);
  } catch (e) {
    throw new Error(
      `${busybox}: cannot read busybox (${(e as Error).message}); ` +
        "install Debian's busybox-static (apt-get install busybox-static) or pass --busybox PATH",
    );
  }
  const applets = await listApplets(busybox);
  const gz = gzipSync(writeNewc(initramfsEntries(binary, applets)), { level: 9 });
  // A plain Uint8Array, not node's Buffer subclass, so callers compare and slice it as documented.
  return new Uint8Array(gz.buffer, gz.byteOffset, gz.byteLength);
}

// Where busybox sits inside the archive; every applet is a symlink to it.
const BUSYBOX_PATH = "bin/busybox";

/** The archive's entries for a busybox binary and its applet paths (e.g. "usr/bin/env"). */
export function initramfsEntries(binary: Uint8Array, appletPaths: readonly string[]): CpioEntry[] {
  const links = new Set<string>();
  for (const p of appletPaths) {
    const path = p.replace(/^\/+/, "");
    if (path && path !== BUSYBOX_PATH) links.add(path);
  }
  // Every command /init and the VMM rely on, whatever the applet list says.
  const have = new Set([...links].map(baseName));
  for (const name of ["sh", "mount", "mkdir", "setsid", "poweroff", "echo"]) {
    if (!have.has(name)) links.add(`bin/${name}`);
  }
  const dirs = new Set(["bin", "sbin", "usr/bin", "usr/sbin", "dev", "proc", "sys", "tmp", "root"]);
  for (const path of links) dirs.add(parentOf(path));
  for (const d of [...dirs]) {
    for (let p = parentOf(d); p; p = parentOf(p)) dirs.add(p);
  }
  dirs.delete("");
  const entries: CpioEntry[] = [...dirs].sort().map((name) => ({
    name,
    kind: "dir",
    perm: name === "tmp" ? 0o1777 : 0o755,
  }));
  entries.push({ name: BUSYBOX_PATH, kind: "file", perm: 0o755, data: binary });
  for (const name of [...links].sort()) {
    entries.push({ name, kind: "symlink", perm: 0o777, data: `/${BUSYBOX_PATH}` });
  }
  // The kernel opens /dev/console for init's stdio before any devtmpfs exists.
  entries.push(
    { name: "dev/console", kind: "chardev", perm: 0o600, rdev: { major: 5, minor: 1 } },
    { name: "dev/ttyS0", kind: "chardev", perm: 0o660, rdev: { major: 4, minor: 64 } },
    { name: "dev/null", kind: "chardev", perm: 0o666, rdev: { major: 1, minor: 3 } },
    { name: "init", kind: "file", perm: 0o755, data: INIT_SCRIPT },
  );
  return entries;
}

/** The newest /boot/vmlinuz-*-cloud-amd64, else the newest /boot/vmlinuz-*, else undefined. */
export function findGuestKernel(bootDir = "/boot"): string | undefined {
  let names: string[];
  try {
    names = [...Deno.readDirSync(bootDir)].filter((e) => !e.isDirectory).map((e) => e.name);
  } catch {
    return undefined;
  }
  const newest = (list: string[]) =>
    list.sort((a, b) => a.localeCompare(b, "en", { numeric: true })).at(-1);
  const kernels = names.filter((n) => n.startsWith("vmlinuz-"));
  const pick = newest(kernels.filter((n) => n.endsWith("-cloud-amd64"))) ?? newest(kernels);
  return pick ? `${bootDir}/${pick}` : undefined;
}

async function listApplets(busybox: string): Promise<string[]> {
  // --list-full gives install paths (sbin/poweroff, usr/bin/env); older builds only know --list.
  for (const [flag, prefix] of [["--list-full", ""], ["--list", "bin/"]]) {
    const out = await new Deno.Command(busybox, { args: [flag], stdout: "piped", stderr: "null" })
      .output();
    const names = new TextDecoder().decode(out.stdout).split("\n").filter(Boolean);
    if (out.success && names.length) return names.map((n) => prefix + n);
  }
  throw new Error(`${busybox}: neither --list-full nor --list printed applets; is it busybox?`);
}

function baseName(path: string): string {
  return path.slice(path.lastIndexOf("/") + 1);
}

function parentOf(path: string): string {
  const i = path.lastIndexOf("/");
  return i < 0 ? "" : path.slice(0, i);
}
