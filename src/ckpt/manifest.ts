/**
 * The manifest: everything a checkpoint is besides page bytes (machine state, generation chain, which
 * fragment holds each page), CBOR-encoded between a versioned header and a CRC-32 trailer. It is the
 * commit point: written to MANIFEST.tmp, fsynced, renamed to MANIFEST, directory fsynced.
 */
import { ACCEL_KINDS } from "../accel/accel.ts";
import { decodeCbor, encodeCbor } from "../codec/cbor.ts";
import { writeFileAtomic } from "../ffi/atomic_file.ts";
import { readRegular } from "../ffi/regular_file.ts";
import { isName, NameError } from "../codec/names.ts";
import type { MachineState } from "../vmm/machine.ts";
import {
  CheckpointFormatError,
  checkVersion,
  crc32,
  hasMagic,
  magic,
  MANIFEST_VERSION,
  writeHead,
} from "./format.ts";
import { PAGE_SIZE } from "../accel/accel.ts";
import { fragmentBound } from "./fragment_layout.ts";

/** "DCRMANIF" */
export const MANIFEST_MAGIC: Uint8Array = magic("DCRMANIF");
/** "DCRMEND" */
export const MANIFEST_END: Uint8Array = magic("DCRMEND");
/** File name of a committed manifest. */
export const MANIFEST_FILE = "MANIFEST";
const HEADER = 24;
/**
 * Largest guest memory a manifest may describe: 1 TiB, the agents' page-store bound (2^28 pages). A
 * reader allocates per page, so a bigger claim is refused before anything proportional is made.
 */
export const MAX_MEM_SIZE = 2 ** 28 * PAGE_SIZE;

/** The ways a checkpoint can be taken: paused, live pre-copy, live copy-on-write. */
export const CHECKPOINT_MODES = ["stop", "precopy", "cow"] as const;
/** How a checkpoint was taken. */
export type CheckpointMode = typeof CHECKPOINT_MODES[number];
/** The mode a checkpoint is taken in when none is asked for. */
export const DEFAULT_CHECKPOINT_MODE: CheckpointMode = "precopy";

/** True when `x` names one of {@link CHECKPOINT_MODES}. */
export function isCheckpointMode(x: unknown): x is CheckpointMode {
  return (CHECKPOINT_MODES as readonly unknown[]).includes(x);
}

/** Most copies one fragment may list besides its writer's. */
export const MAX_COPIES = 15;

/** One fragment a checkpoint uses. */
export interface FragmentRef {
  /** Path relative to the checkpoint store root. */
  path: string;
  /** Host that wrote it. */
  host: string;
  /** Generation that wrote it. */
  generation: number;
  /** CRC-32 of its footer: binds this manifest to exactly that file. */
  footerCrc: number;
  /** Pages it indexes. */
  pages: number;
  /** File size. */
  bytes: number;
  /**
   * Other hosts holding a byte-equivalent copy at the same path of their store (manifest 1.3);
   * absent in older manifests, which had one copy each.
   */
  copies?: string[];
}

/** Timings and counts of the checkpoint, for `ckpt inspect` and reports. */
export interface CheckpointStats {
  /** Pages written in this generation (stored, not zero). */
  pagesSaved: number;
  /** Zero pages recorded. */
  zeroPages: number;
  /** Pages referenced from earlier generations. */
  pagesReused: number;
  /** Page copies written more than once (precopy rounds). */
  pagesSavedTwice: number;
  /** Page bytes written. */
  bytesWritten: number;
  /** Precopy rounds (1 for stop and cow). */
  rounds: number;
  /** Time the vCPUs were paused. */
  downtimeMs: number;
  /** Whole checkpoint time. */
  totalMs: number;
}

/** A checkpoint's manifest. */
export interface Manifest {
  /** dcres version that wrote it. */
  dcresVersion: string;
  /** Checkpoint id (hex). */
  id: string;
  /** VM name. */
  vm: string;
  /** Generation number in its store (1, 2, ...). */
  generation: number;
  /** Generation this one is incremental on, or null for a full checkpoint. */
  parent: number | null;
  /** ISO time of the consistency point. */
  createdAt: string;
  /** How it was taken. */
  mode: CheckpointMode;
  /** zstd chunks. */
  compressed: boolean;
  /** Machine state at the consistency point. */
  machine: MachineState;
  /** Fragments holding the pages (this generation's and earlier ones'). */
  fragments: FragmentRef[];
  /** Which fragment holds each page: runs of [first gfn, count, fragment index], covering all RAM. */
  pageMap: Uint32Array;
  /** Gfns most recently used first, for lazy restore's prefetch. */
  prefetchOrder: Uint32Array;
  /** Counts and timings. */
  stats: CheckpointStats;
  /** For a merged checkpoint: the generation whose chain it squashed. */
  mergedFrom?: number;
  /** For a merged checkpoint: the id of the checkpoint it stands for (the same consistency point). */
  mergedFromId?: string;
  /**
   * For a split VM: main's memory budget, every participant (name → agent address, "main"), and
   * from 1.3 main's own agent address when it was known (where its copies are found once main is
   * no longer the host a restore goes through).
   */
  split?: { mainMemBytes: number; hosts: Record<string, string>; mainAddr?: string };
  /**
   * From 1.4: the agent address of each host named as a writer or holder of a copy, when known
   * (name as in `fragments`, a one-host VM's own host as "main"), so any holder reaches the others.
   */
  addrs?: Record<string, string>;
  /** From 1.4: the name (its certificate's) of the host that took the checkpoint, when known. */
  host?: string;
}

/** Most sub-hosts a split VM may have. */
export const MAX_SUBS = 64;
/** Most entries `addrs` may hold: every writer and copy of a split VM's largest ring (main too). */
export const MAX_ADDRS = MAX_SUBS + 1;
/** An agent address as a manifest records it: HOST:PORT, at most 300 characters. */
const ADDR = /^[A-Za-z0-9._:[\]-]{1,294}:[0-9]{1,5}$/;

/** True when `a` is an agent address as a manifest records it (HOST:PORT, at most 300 characters). */
export function isRecordedAddress(a: unknown): a is string {
  return typeof a === "string" && a.length <= 300 && ADDR.test(a);
}

/** Encodes a manifest into its file bytes. */
export function encodeManifest(m: Manifest): Uint8Array<ArrayBuffer> {
  const body = encodeCbor(m);
  const out = new Uint8Array(HEADER + body.length + 4 + MANIFEST_END.length);
  const dv = writeHead(out, MANIFEST_MAGIC, MANIFEST_VERSION);
  dv.setUint16(12, MANIFEST_VERSION.patch, true);
  dv.setBigUint64(16, BigInt(body.length), true);
  out.set(body, HEADER);
  dv.setUint32(HEADER + body.length, crc32(out.subarray(0, HEADER + body.length)), true);
  out.set(MANIFEST_END, HEADER + body.length + 4);
  return out;
}

/** Decodes and checks manifest file bytes; `file` names the file in errors. */
export function decodeManifest(file: string, buf: Uint8Array): Manifest {
  const bad = (off: number, what: string): never => {
    throw new CheckpointFormatError(file, off, what);
  };
  if (buf.length < HEADER + 4 + MANIFEST_END.length) {
    bad(buf.length, `file is ${buf.length} bytes, too short for a manifest (truncated?)`);
  }
  if (!hasMagic(buf, 0, MANIFEST_MAGIC)) bad(0, "not a dcres manifest (wrong magic)");
  const dv = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  checkVersion(
    file,
    8,
    { major: dv.getUint16(8, true), minor: dv.getUint16(10, true), patch: dv.getUint16(12, true) },
    MANIFEST_VERSION,
    "manifest",
  );
  const len = Number(dv.getBigUint64(16, true));
  if (HEADER + len + 4 + MANIFEST_END.length !== buf.length) {
    bad(
      16,
      `body length ${len} does not match the file size ${buf.length} (truncated or extended)`,
    );
  }
  if (!hasMagic(buf, HEADER + len + 4, MANIFEST_END)) bad(HEADER + len + 4, "end marker missing");
  const crc = dv.getUint32(HEADER + len, true);
  if (crc32(buf.subarray(0, HEADER + len)) !== crc) bad(HEADER + len, "manifest checksum mismatch");
  let m: Manifest;
  try {
    m = decodeCbor(buf.subarray(HEADER, HEADER + len)) as Manifest;
  } catch (e) {
    return bad(HEADER, `body does not decode: ${(e as Error).message}`);
  }
  const isObj = (x: unknown) => typeof x === "object" && x !== null && !Array.isArray(x);
  const checks: Array<[keyof Manifest, (x: unknown) => boolean, string]> = [
    ["id", (x) => typeof x === "string", "a string"],
    ["vm", (x) => typeof x === "string", "a string"],
    ["generation", (x) => Number.isSafeInteger(x), "an integer"],
    ["mode", isCheckpointMode, "stop, precopy or cow"],
    [
      "machine",
      (x) =>
        isObj(x) && isObj((x as Manifest["machine"]).spec) && isObj((x as Manifest["machine"]).vm),
      "a machine state",
    ],
    [
      "fragments",
      (x) =>
        Array.isArray(x) &&
        x.every((f) => isObj(f) && typeof f.path === "string" && isCount(f.pages)),
      "a list of fragments",
    ],
    ["pageMap", (x) => x instanceof Uint32Array && x.length % 3 === 0, "runs of three u32"],
    ["prefetchOrder", (x) => x instanceof Uint32Array, "a u32 array"],
    ["stats", isObj, "an object"],
  ];
  if (!isObj(m)) bad(HEADER, "body is not a map");
  for (const [k, ok, what] of checks) {
    if (!ok(m[k])) bad(HEADER, `field "${k}" is missing or not ${what}`);
  }
  const mem = m.machine.spec.memSize;
  if (!isCount(mem) || mem % PAGE_SIZE) {
    bad(HEADER, `field "machine.spec.memSize" is not whole pages`);
  }
  // Manifests before 1.2 name no accelerator: they were all taken on KVM.
  m.machine.vm.accel ??= "kvm";
  if (!(ACCEL_KINDS as readonly unknown[]).includes(m.machine.vm.accel)) {
    bad(HEADER, `field "machine.vm.accel" is not one of ${ACCEL_KINDS.join(", ")}`);
  }
  if (!isName("vm", m.machine.spec.name)) {
    bad(HEADER, new NameError(`field "machine.spec.name"`, m.machine.spec.name, "vm").message);
  }
  checkAddrs(m, bad);
  checkSplit(m, bad);
  const most = fragmentBound(mem / PAGE_SIZE);
  for (const [k, f] of m.fragments.entries()) {
    if (!isCount(f.bytes) || f.bytes > most) {
      bad(HEADER, `field "fragments[${k}].bytes" is not a size up to ${most} (this VM's largest)`);
    }
    // A fragment path is joined to the store: only gNNNNNN/HOST.frag, never absolute nor `..`.
    if (!isName("fragment-path", f.path)) {
      bad(HEADER, new NameError(`field "fragments[${k}].path"`, f.path, "fragment-path").message);
    }
    if (!isName("host", f.host)) {
      bad(HEADER, new NameError(`field "fragments[${k}].host"`, f.host, "host").message);
    }
    if (f.copies === undefined) continue;
    const copies: unknown = f.copies;
    if (!Array.isArray(copies) || copies.length > MAX_COPIES) {
      bad(HEADER, `field "fragments[${k}].copies" is not a list of at most ${MAX_COPIES} hosts`);
    }
    const list = copies as unknown[];
    for (const h of list) {
      if (!isName("host", h)) {
        bad(HEADER, new NameError(`field "fragments[${k}].copies"`, h, "host").message);
      }
    }
    // Copies on distinct hosts, none on the writer's: one host lost never takes two of them.
    if (new Set([f.host, ...list]).size !== list.length + 1) {
      bad(HEADER, `field "fragments[${k}].copies" names a host twice`);
    }
  }
  for (let i = 0; i < m.pageMap.length; i += 3) {
    if (m.pageMap[i + 2] >= m.fragments.length) {
      bad(
        HEADER,
        `pageMap run ${i / 3} names fragment ${m.pageMap[i + 2]} of ${m.fragments.length}`,
      );
    }
  }
  return m;
}

/**
 * Checks `split` of `m`, when present: main's budget a size, at most MAX_ADDRS
 * participants by host name, each with an agent address ("main" for main), and main's address.
 */
function checkSplit(m: Manifest, bad: (off: number, what: string) => never): void {
  const split: unknown = m.split;
  if (split === undefined) return;
  if (typeof split !== "object" || split === null || Array.isArray(split)) {
    bad(HEADER, `field "split" is not a map`);
  }
  const sp = split as Record<string, unknown>;
  if (!isCount(sp.mainMemBytes) || sp.mainMemBytes > MAX_MEM_SIZE) {
    bad(HEADER, `field "split.mainMemBytes" is not a size up to ${MAX_MEM_SIZE}`);
  }
  checkHostMap("split.hosts", sp.hosts, true, bad);
  if (sp.mainAddr !== undefined && !isRecordedAddress(sp.mainAddr)) {
    bad(HEADER, `field "split.mainAddr" is not an address (HOST:PORT)`);
  }
}

/** Checks the 1.4 fields `addrs` and `host` of `m`, when present; `bad` throws. */
function checkAddrs(m: Manifest, bad: (off: number, what: string) => never): void {
  const host: unknown = m.host;
  if (host !== undefined && !isName("host", host)) {
    bad(HEADER, new NameError(`field "host"`, host, "host").message);
  }
  if (m.addrs !== undefined) checkHostMap("addrs", m.addrs, false, bad);
}

/**
 * Checks `field`, a map of at most MAX_ADDRS host names to agent addresses (`"main"` too when
 * `main` allows it); `bad` throws.
 */
function checkHostMap(
  field: string,
  map: unknown,
  main: boolean,
  bad: (off: number, what: string) => never,
): void {
  if (typeof map !== "object" || map === null || Array.isArray(map)) {
    bad(HEADER, `field "${field}" is not a map of host names to addresses`);
  }
  const entries = Object.entries(map as Record<string, unknown>);
  if (entries.length > MAX_ADDRS) {
    bad(HEADER, `field "${field}" has ${entries.length} entries, more than ${MAX_ADDRS}`);
  }
  for (const [name, a] of entries) {
    if (!isName("host", name)) bad(HEADER, new NameError(`field "${field}"`, name, "host").message);
    if (!(main && a === "main") && !isRecordedAddress(a)) {
      bad(
        HEADER,
        `field "${field}.${name}" is not an address (HOST:PORT)${main ? ` or "main"` : ""}`,
      );
    }
  }
}

function isCount(x: unknown): x is number {
  return Number.isSafeInteger(x) && (x as number) >= 0;
}

/**
 * The guest pages `m` describes, once its page map is checked to cover them exactly once and to give
 * no fragment more pages than it says it holds; returns the pages the map gives each fragment, so a
 * reader can hold them against the fragment files. Work is in the map's runs, never in pages, so a
 * hostile memory size costs nothing. `file` names the manifest in errors.
 */
export function checkPageMap(file: string, m: Manifest): { pages: number; perFragment: number[] } {
  const bad = (what: string): never => {
    throw new CheckpointFormatError(file, 0, what);
  };
  const mem = m.machine.spec.memSize;
  if (mem > MAX_MEM_SIZE) {
    bad(`guest memory of ${mem} bytes exceeds the ${MAX_MEM_SIZE}-byte limit`);
  }
  const pages = mem / PAGE_SIZE;
  const perFragment = m.fragments.map(() => 0);
  const map = m.pageMap;
  let next = 0;
  for (let i = 0; i < map.length; i += 3) {
    const [first, count, frag] = [map[i], map[i + 1], map[i + 2]];
    if (first !== next || count === 0 || first + count > pages) {
      bad(`page map does not cover guest memory exactly once (run ${i / 3}: ${first}+${count})`);
    }
    perFragment[frag] += count;
    if (perFragment[frag] > m.fragments[frag].pages) {
      bad(
        `page map gives fragment ${frag} more than the ${m.fragments[frag].pages} pages it holds`,
      );
    }
    next = first + count;
  }
  if (next !== pages) {
    bad(`page map does not cover guest memory exactly once (${next} of ${pages} pages)`);
  }
  return { pages, perFragment };
}

/** The largest manifest read (1 GiB): far above any real one, below what would exhaust memory. */
const MAX_MANIFEST_BYTES = 2 ** 30;

/** Reads and checks `dir/MANIFEST` (a regular file only: a FIFO or symlink is refused, not waited on). */
export function readManifest(dir: string): Manifest {
  const file = `${dir}/${MANIFEST_FILE}`;
  let buf: Uint8Array;
  try {
    buf = readRegular(file, MAX_MANIFEST_BYTES);
  } catch (e) {
    const why = (e as Error).message.replace(`${file}: `, "");
    throw new CheckpointFormatError(
      file,
      0,
      why.includes("ENOENT") ? "missing: the checkpoint was never committed" : why,
    );
  }
  return decodeManifest(file, buf);
}

/** Commits `m` into `dir`: MANIFEST.tmp written and fsynced, renamed to MANIFEST, `dir` fsynced. */
export function commitManifest(dir: string, m: Manifest): void {
  writeFileAtomic(`${dir}/${MANIFEST_FILE}`, encodeManifest(m), {
    tmp: `${dir}/${MANIFEST_FILE}.tmp`,
  });
}
