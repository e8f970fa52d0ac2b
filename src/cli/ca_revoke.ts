/**
 * `dcres ca revoke`: adds a certificate's serial to the cluster CA's X.509 CRL (`ca.crl` beside
 * `ca.crt`), signed with the CA key. Agents read `ca.crl` from their identity directory, refuse a
 * revoked peer at the handshake and cut an already-connected one at their next re-check
 * (docs/SECURITY.md, "Revocation"). The CRL is cumulative: each revocation rewrites it whole with
 * every earlier entry and a later thisUpdate, so an agent never takes an older one.
 */
import { join, resolve } from "node:path";
import { writeFileAtomic } from "../ffi/atomic_file.ts";
import { FILES, IdentityError, lib, parseCert, readText, SIGNING, toPem } from "../net/x509.ts";
import { CRL_FILE, readCrl, serialKey } from "../net/revocation.ts";
import { loadCa } from "./ca_admin.ts";
import { EXIT, type GlobalOptions, report } from "./context.ts";
import { UsageError } from "./units.ts";

/** Flags of `ca revoke`. */
export interface CaRevokeFlags {
  /** CA directory (from `ca init`). */
  ca: string;
  /** Serial number to revoke, in hex. */
  serial?: string;
  /** A certificate file whose serial to revoke. */
  cert?: string;
}

/** What a revocation wrote. */
export interface RevokeInfo {
  /** The CRL file. */
  crlFile: string;
  /** The serial revoked. */
  serial: string;
  /** False when it was revoked already (the CRL is written again all the same). */
  added: boolean;
  /** Every serial the CRL now lists. */
  revoked: string[];
}

/** The CA's revocation list as read from its directory: the PEM and when it was signed. */
export interface CaCrl {
  /** The file it came from. */
  file: string;
  /** The list, PEM. */
  pem: string;
  /** When the CA signed it. */
  thisUpdate: Date;
}

/** The revocation list in CA directory `caDir`, checked against the CA; undefined when none. */
export async function caCrl(caDir: string): Promise<CaCrl | undefined> {
  const file = join(caDir, CRL_FILE);
  let pem: string;
  try {
    pem = Deno.readTextFileSync(file);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return undefined;
    throw e;
  }
  const caPem = Deno.readTextFileSync(join(caDir, FILES.caCert));
  return { file, pem, thisUpdate: (await readCrl(pem, caPem, file)).thisUpdate };
}

/**
 * Gives identity directory `outDir` the CA's revocation list `crl`, so a host or client issued after
 * a revocation refuses the revoked peer from its first start. A list already there that is as new
 * or newer stays. Returns the file written, if any.
 */
export async function shareCrl(crl: CaCrl, outDir: string): Promise<string | undefined> {
  const to = join(outDir, CRL_FILE);
  if (resolve(crl.file) === resolve(to)) return undefined;
  try {
    const caPem = Deno.readTextFileSync(join(outDir, FILES.caCert));
    const held = await readCrl(Deno.readTextFileSync(to), caPem, to);
    if (held.thisUpdate >= crl.thisUpdate) return undefined;
  } catch {
    // None there, or not a list of this CA: the CA's own replaces it.
  }
  writeFileAtomic(to, new TextEncoder().encode(crl.pem), { mode: 0o644 });
  return to;
}

/** Revokes `serial` (hex) in the CA of `caDir`: the CRL there, rewritten with it, signed and atomic. */
export async function revokeSerial(
  caDir: string,
  serial: string,
  now: Date = new Date(),
): Promise<RevokeInfo> {
  if (!/^(0x)?[0-9a-fA-F:]{1,128}$/.test(serial.trim())) {
    throw new IdentityError(`--serial ${serial}: not a hex serial number`, { usage: true });
  }
  const key = serialKey(serial.trim().replace(/^0x/, "").replaceAll(":", ""));
  const x = await lib();
  const ca = await loadCa(x, caDir, now);
  const crlFile = join(caDir, CRL_FILE);
  let entries = new Map<string, Date>();
  let last = new Date(0);
  try {
    const held = await readCrl(Deno.readTextFileSync(crlFile), ca.certPem, crlFile);
    entries = held.revoked;
    last = held.thisUpdate;
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound)) throw e;
  }
  const added = !entries.has(key);
  if (added) entries.set(key, now);
  // Agents refuse a CRL older than the one they hold; two revocations in one second must still order.
  const thisUpdate = new Date(Math.max(now.getTime(), last.getTime() + 1000));
  const crl = await x.X509CrlGenerator.create({
    issuer: ca.cert.subjectName,
    thisUpdate,
    // Agents do not expire a CRL; nextUpdate is there because the library's parser misreads the
    // entries of a CRL without one.
    nextUpdate: ca.cert.notAfter,
    entries: [...entries].map(([serialNumber, revocationDate]) => ({
      serialNumber: serialNumber.length % 2 ? `0${serialNumber}` : serialNumber,
      revocationDate,
      // Without a reason the library writes an empty entry-extensions sequence, which OpenSSL refuses.
      reason: x.X509CrlReason.unspecified,
    })),
    signingAlgorithm: SIGNING,
    signingKey: ca.key,
  });
  // "X509 CRL" is the label OpenSSL reads; the library's own PEM says "CRL".
  const pem = toPem(new Uint8Array(crl.rawData), "X509 CRL");
  writeFileAtomic(crlFile, new TextEncoder().encode(pem), { mode: 0o644 });
  return { crlFile, serial: key, added, revoked: [...entries.keys()] };
}

/** `ca revoke --ca DIR (--serial HEX | --cert FILE)`: revokes a host certificate. */
export async function caRevoke(g: GlobalOptions, f: CaRevokeFlags): Promise<number> {
  if (!f.ca?.trim()) {
    throw new UsageError("--ca: empty; give the CA directory made by dcres ca init");
  }
  if ((f.serial === undefined) === (f.cert === undefined)) {
    throw new UsageError("give one of --serial HEX or --cert FILE");
  }
  let serial = f.serial;
  if (f.cert !== undefined) {
    const cert = parseCert(await lib(), readText(f.cert, "certificate", "give a PEM certificate"));
    if (!cert) throw new UsageError(`--cert ${f.cert}: not a PEM certificate`);
    serial = cert.serialNumber;
  }
  let info: RevokeInfo;
  try {
    info = await revokeSerial(f.ca, serial!);
  } catch (e) {
    if (e instanceof IdentityError && e.usage) throw new UsageError(e.message);
    throw e;
  }
  report(g, info, () =>
    [
      `${
        info.added ? "revoked" : "already revoked:"
      } serial ${info.serial}; ${info.crlFile} lists ${info.revoked.length}`,
      `next: copy ${info.crlFile} to ca.crl in every agent's identity directory; agents reload it`,
    ].join("\n"));
  return EXIT.OK;
}
