/**
 * Cluster CA administration, for `dcres ca`: making the cluster CA and issuing host certificates
 * signed by it, written atomically with keys 0600 and directories 0700. Its messages name the
 * command's flags. Runtime authentication (loading and checking identities) is `net/identity.ts`.
 */
import { join, resolve } from "node:path";
import { writeFileAtomic } from "../ffi/atomic_file.ts";
import type * as X509 from "@peculiar/x509";
import {
  CERT_PEM,
  checkDirExists,
  checkKeyMode,
  commonName,
  EC,
  FILES,
  hex,
  IdentityError,
  importPrivateKey,
  keyMatches,
  keyToPem,
  type Lib,
  lib,
  OID_CLIENT_AUTH,
  OID_SERVER_AUTH,
  parseCert,
  readText,
  SIGNING,
} from "../net/x509.ts";
import { ROLE_URI_PREFIX } from "../net/identity.ts";
import { isRole, type Role, ROLES } from "../rpc/roles.ts";

/** Validity of a new cluster CA, in years. */
export const CA_YEARS = 10;
/** Default validity of a host certificate, in days. */
export const DEFAULT_HOST_DAYS = 825;
/** Longest host certificate validity accepted, in days (the CA's own lifetime). */
export const MAX_HOST_DAYS = 3650;
/** A host certificate is valid from this long before it is issued, for clock skew between hosts. */
export const CLOCK_SKEW_MS = 5 * 60_000;

/** What `initCa` made. */
export interface CaInfo {
  /** The CA directory (absolute). */
  dir: string;
  /** Path of the CA certificate. */
  certFile: string;
  /** Path of the CA private key. */
  keyFile: string;
  /** Subject common name: "dcres cluster CA <id>". */
  subject: string;
  /** The random id in the subject. */
  id: string;
  /** Start of validity (ISO 8601). */
  notBefore: string;
  /** End of validity (ISO 8601). */
  notAfter: string;
  /** SHA-256 of the certificate's DER, hex. */
  sha256: string;
}

/** Options of `initCa`. */
export interface InitCaOptions {
  /** Replace an existing CA in the directory. */
  force?: boolean;
  /** Start of validity (default now); tests use it. */
  now?: Date;
}

/** Options of `issueHost`. */
export interface IssueHostOptions {
  /** CA directory holding `ca.crt` and `ca.key`. */
  caDir: string;
  /** Host name: the certificate's CN and its DNS subjectAltName. */
  host: string;
  /** IP addresses added as IP subjectAltNames. */
  ips?: string[];
  /** Validity in days (default 825). */
  days?: number;
  /** The role the certificate carries (default agent). */
  role?: Role;
  /** Directory to write `host.crt`, `host.key` and `ca.crt` into. */
  outDir: string;
  /** Replace an existing host identity in `outDir`. */
  force?: boolean;
  /**
   * Internal (tests): start of validity instead of now minus the clock-skew allowance; with a past
   * date and few `days` it makes an already expired certificate.
   */
  validFrom?: Date;
}

/** What `issueHost` made. */
export interface HostInfo {
  /** The output directory (absolute). */
  dir: string;
  /** Path of the host certificate. */
  certFile: string;
  /** Path of the host private key. */
  keyFile: string;
  /** Path of the copy of the CA certificate. */
  caFile: string;
  /** Host name (CN and DNS subjectAltName). */
  host: string;
  /** IP subjectAltNames, normalized. */
  ips: string[];
  /** The role it carries. */
  role: Role;
  /** Subject of the issuing CA. */
  issuer: string;
  /** Serial number, hex. */
  serial: string;
  /** Start of validity (ISO 8601). */
  notBefore: string;
  /** End of validity (ISO 8601). */
  notAfter: string;
  /** SHA-256 of the certificate's DER, hex. */
  sha256: string;
}

// ---------------------------------------------------------------------------------------------
// Input checks

/**
 * Checks a host name (RFC 1123 labels, the last one not all digits, as TLS name checks require);
 * returns it, or throws an IdentityError naming --host.
 */
export function checkHostName(host: string): string {
  const h = host.trim();
  if (h === "") {
    throw new IdentityError("--host: empty host name; give e.g. node1", { usage: true });
  }
  if (isIPv4(h) || h.includes(":")) {
    throw new IdentityError(
      `--host ${host}: an IP address; give a host name and pass the address with --ip`,
      { usage: true },
    );
  }
  const label = /^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?$/;
  const labels = h.split(".");
  if (h.length > 253 || !labels.every((l) => label.test(l)) || /^\d+$/.test(labels.at(-1)!)) {
    throw new IdentityError(
      `--host ${host}: not a valid host name; use letters, digits, '-' and dots, e.g. node1.example`,
      { usage: true },
    );
  }
  return h;
}

function isIPv4(s: string): boolean {
  const octet = "(?:25[0-5]|2[0-4]\\d|1\\d\\d|[1-9]?\\d)";
  return new RegExp(`^${octet}(?:\\.${octet}){3}$`).test(s);
}

/** Checks an IPv4 or IPv6 address; returns its normal form, or throws an IdentityError naming --ip. */
export function checkIp(ip: string): string {
  const s = ip.trim();
  if (isIPv4(s)) return s;
  if (s.includes(":") && !/[%\[\]/]/.test(s)) {
    try {
      return new URL(`http://[${s}]/`).hostname.slice(1, -1);
    } catch {
      // fall through to the error
    }
  }
  throw new IdentityError(
    `--ip ${ip}: not an IPv4 or IPv6 address; use e.g. 10.0.0.5 or fd00::5`,
    { usage: true },
  );
}

function checkDays(days: number): number {
  if (!Number.isInteger(days) || days < 1 || days > MAX_HOST_DAYS) {
    throw new IdentityError(
      `--days ${days}: must be a whole number from 1 to ${MAX_HOST_DAYS}`,
      { usage: true },
    );
  }
  return days;
}

// ---------------------------------------------------------------------------------------------
// Files

function exists(path: string): boolean {
  try {
    Deno.lstatSync(path);
    return true;
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return false;
    throw e;
  }
}

function makeDir(dir: string, flag: string): void {
  try {
    Deno.mkdirSync(dir, { recursive: true, mode: 0o700 });
  } catch (e) {
    throw new IdentityError(`${flag} ${dir}: cannot create the directory: ${(e as Error).message}`);
  }
  if (!Deno.statSync(dir).isDirectory) {
    throw new IdentityError(`${flag} ${dir}: not a directory`);
  }
}

/**
 * Writes `text` to `path` atomically (a new temporary file created with `mode`, so a secret is
 * never readable by others); without `replace` it fails if `path` exists.
 */
function writeIdentityFile(path: string, text: string, mode: number, replace: boolean): void {
  writeFileAtomic(path, new TextEncoder().encode(text), {
    mode,
    replace,
    exists: () => new IdentityError(`${path} exists; pass --force to replace it`),
  });
}

function randomSerial(): string {
  const b = crypto.getRandomValues(new Uint8Array(16));
  b[0] = (b[0] & 0x7f) | 0x01; // positive, and no leading zero byte to strip
  return hex(b.buffer);
}

// ---------------------------------------------------------------------------------------------
// CA

/** Makes a cluster CA in `dir`: a P-256 key (`ca.key`, 0600) and a self-signed 10-year CA certificate (`ca.crt`). */
export async function initCa(dir: string, opts: InitCaOptions = {}): Promise<CaInfo> {
  const x = await lib();
  const abs = resolve(dir);
  const certFile = join(abs, FILES.caCert);
  const keyFile = join(abs, FILES.caKey);
  if (!opts.force) {
    for (const f of [keyFile, certFile]) {
      if (exists(f)) {
        throw new IdentityError(
          `${f} exists: ${dir} already holds a cluster CA; pass --force to replace it ` +
            `(every host certificate it issued stops being accepted)`,
        );
      }
    }
  }
  makeDir(abs, "--dir");
  const now = opts.now ?? new Date();
  const notAfter = new Date(now);
  notAfter.setUTCFullYear(notAfter.getUTCFullYear() + CA_YEARS);
  const id = hex(crypto.getRandomValues(new Uint8Array(6)).buffer);
  const subject = `dcres cluster CA ${id}`;
  const keys = await crypto.subtle.generateKey(EC, true, ["sign", "verify"]);
  const cert = await x.X509CertificateGenerator.createSelfSigned({
    serialNumber: randomSerial(),
    name: [{ CN: [subject] }],
    notBefore: now,
    notAfter,
    signingAlgorithm: SIGNING,
    keys,
    extensions: [
      new x.BasicConstraintsExtension(true, 0, true),
      new x.KeyUsagesExtension(x.KeyUsageFlags.keyCertSign | x.KeyUsageFlags.cRLSign, true),
      await x.SubjectKeyIdentifierExtension.create(keys.publicKey),
    ],
  });
  const keyPem = keyToPem(await crypto.subtle.exportKey("pkcs8", keys.privateKey));
  writeIdentityFile(keyFile, keyPem, 0o600, opts.force ?? false);
  writeIdentityFile(certFile, cert.toString("pem") + "\n", 0o644, opts.force ?? false);
  return {
    dir: abs,
    certFile,
    keyFile,
    subject,
    id,
    notBefore: cert.notBefore.toISOString(),
    notAfter: cert.notAfter.toISOString(),
    sha256: hex(await cert.getThumbprint("SHA-256")),
  };
}

/** The cluster CA loaded for signing: its certificate and its key, checked to match. */
export interface LoadedCa {
  /** The CA certificate. */ cert: X509.X509Certificate;
  /** It as PEM. */ certPem: string;
  /** Its private key. */ key: CryptoKey;
}

/** Loads and checks the CA in `dir` for signing; throws an IdentityError naming the file at fault. */
export async function loadCa(x: Lib, dir: string, now: Date): Promise<LoadedCa> {
  const hint = `make one with: dcres ca init --dir ${dir}`;
  checkDirExists(dir, "--ca", hint);
  const certFile = join(dir, FILES.caCert);
  const keyFile = join(dir, FILES.caKey);
  const certPem = readText(certFile, "CA certificate", hint);
  const keyPem = readText(
    keyFile,
    "CA private key",
    `it is made with ${FILES.caCert} by: dcres ca init`,
  );
  const cert = parseCert(x, certPem);
  if (!cert) throw new IdentityError(`${certFile}: not a PEM certificate; ${hint}`);
  const bc = cert.getExtension(x.BasicConstraintsExtension);
  if (!bc?.ca) {
    throw new IdentityError(
      `${certFile}: not a CA certificate (no basicConstraints CA:true); ${hint}`,
    );
  }
  if (now > cert.notAfter) {
    throw new IdentityError(
      `${certFile}: the cluster CA expired on ${cert.notAfter.toISOString()}; ${hint}`,
    );
  }
  const key = await importPrivateKey(keyPem);
  if (!key) {
    throw new IdentityError(`${keyFile}: not an ECDSA P-256 private key in PKCS#8 PEM; ${hint}`);
  }
  checkKeyMode(keyFile);
  if (!(await keyMatches(key, cert))) {
    throw new IdentityError(
      `${keyFile}: does not match ${certFile} (a key from another CA?); use the ca.key made ` +
        `with this ca.crt, or make a new CA with dcres ca init --force`,
    );
  }
  return { cert, certPem: CERT_PEM.exec(certPem)![0] + "\n", key };
}

/**
 * Issues a host certificate signed by the CA in `opts.caDir`, for TLS server and client use
 * (extKeyUsage serverAuth+clientAuth, SAN DNS:host and IP:each ip), into `opts.outDir`.
 */
export async function issueHost(opts: IssueHostOptions): Promise<HostInfo> {
  const host = checkHostName(opts.host);
  const ips = [...new Set((opts.ips ?? []).map(checkIp))];
  const days = checkDays(opts.days ?? DEFAULT_HOST_DAYS);
  const role = opts.role ?? "agent";
  if (!isRole(role)) {
    throw new IdentityError(`--role ${role}: not a role; use one of ${ROLES.join(", ")}`, {
      usage: true,
    });
  }
  const x = await lib();
  const now = new Date();
  const caDir = resolve(opts.caDir);
  const ca = await loadCa(x, caDir, now);

  const out = resolve(opts.outDir);
  const certFile = join(out, FILES.hostCert);
  const keyFile = join(out, FILES.hostKey);
  const caFile = join(out, FILES.caCert);
  // A copy of this very CA certificate already in place is not a conflict (e.g. --out == --ca).
  let writeCa = true;
  if (exists(caFile)) {
    let same = false;
    try {
      same = CERT_PEM.exec(Deno.readTextFileSync(caFile))?.[0] === CERT_PEM.exec(ca.certPem)![0];
    } catch {
      // unreadable: treat as different
    }
    if (same) writeCa = false;
    else if (!opts.force) {
      throw new IdentityError(
        `${caFile} exists and holds another CA certificate; pass --force to replace it`,
      );
    }
  }
  if (!opts.force) {
    for (const f of [keyFile, certFile]) {
      if (exists(f)) {
        throw new IdentityError(
          `${f} exists: ${opts.outDir} already holds a host identity; pass --force to replace it`,
        );
      }
    }
  }
  makeDir(out, "--out");

  const notBefore = opts.validFrom ?? new Date(now.getTime() - CLOCK_SKEW_MS);
  const notAfter = new Date((opts.validFrom ?? now).getTime() + days * 86_400_000);
  if (notAfter > ca.cert.notAfter) {
    throw new IdentityError(
      `--days ${days}: the certificate would outlive the cluster CA (valid until ` +
        `${ca.cert.notAfter.toISOString()}); give fewer days`,
      { usage: true },
    );
  }
  const keys = await crypto.subtle.generateKey(EC, true, ["sign", "verify"]);
  const cert = await x.X509CertificateGenerator.create({
    serialNumber: randomSerial(),
    subject: [{ CN: [host] }],
    issuer: ca.cert.subjectName,
    notBefore,
    notAfter,
    signingAlgorithm: SIGNING,
    publicKey: keys.publicKey,
    signingKey: ca.key,
    extensions: [
      new x.BasicConstraintsExtension(false, undefined, true),
      new x.KeyUsagesExtension(x.KeyUsageFlags.digitalSignature, true),
      new x.ExtendedKeyUsageExtension([OID_SERVER_AUTH, OID_CLIENT_AUTH]),
      new x.SubjectAlternativeNameExtension([
        { type: "dns", value: host },
        ...ips.map((value) => ({ type: "ip" as const, value })),
        { type: "url", value: `${ROLE_URI_PREFIX}${role}` },
      ]),
      await x.SubjectKeyIdentifierExtension.create(keys.publicKey),
      await x.AuthorityKeyIdentifierExtension.create(ca.cert.publicKey),
    ],
  });
  const keyPem = keyToPem(await crypto.subtle.exportKey("pkcs8", keys.privateKey));
  const force = opts.force ?? false;
  writeIdentityFile(keyFile, keyPem, 0o600, force);
  writeIdentityFile(certFile, cert.toString("pem") + "\n", 0o644, force);
  if (writeCa) writeIdentityFile(caFile, ca.certPem, 0o644, force);
  return {
    dir: out,
    certFile,
    keyFile,
    caFile,
    host,
    ips,
    role,
    issuer: commonName(ca.cert.subject),
    serial: cert.serialNumber,
    notBefore: cert.notBefore.toISOString(),
    notAfter: cert.notAfter.toISOString(),
    sha256: hex(await cert.getThumbprint("SHA-256")),
  };
}

/** What a certificate says, for reports and tests. */
export interface CertificateInfo {
  /** Subject distinguished name, e.g. "CN=node1". */
  subject: string;
  /** Issuer distinguished name. */
  issuer: string;
  /** Serial number, hex. */
  serial: string;
  /** DNS subjectAltNames. */
  dns: string[];
  /** IP subjectAltNames. */
  ips: string[];
  /** Roles its subjectAltName URIs state (a host certificate states one). */
  roles: string[];
  /** Start of validity (ISO 8601). */
  notBefore: string;
  /** End of validity (ISO 8601). */
  notAfter: string;
  /** basicConstraints CA:true. */
  ca: boolean;
  /** keyUsage names (digitalSignature, keyCertSign, cRLSign, ...). */
  keyUsage: string[];
  /** extKeyUsage names (serverAuth, clientAuth) or OIDs. */
  extKeyUsage: string[];
  /** SHA-256 of the DER, hex. */
  sha256: string;
}

const KEY_USAGE_NAMES = [
  "digitalSignature",
  "nonRepudiation",
  "keyEncipherment",
  "dataEncipherment",
  "keyAgreement",
  "keyCertSign",
  "cRLSign",
  "encipherOnly",
  "decipherOnly",
];

/** Parses a PEM certificate into `CertificateInfo`; throws an IdentityError if it is not one. */
export async function inspectCertificate(pem: string): Promise<CertificateInfo> {
  const x = await lib();
  const cert = parseCert(x, pem);
  if (!cert) throw new IdentityError("not a PEM certificate");
  const names = cert.getExtension(x.SubjectAlternativeNameExtension)?.names.items ?? [];
  const ku = cert.getExtension(x.KeyUsagesExtension)?.usages ?? 0;
  const eku = Array.from(cert.getExtension(x.ExtendedKeyUsageExtension)?.usages ?? [], String);
  return {
    subject: cert.subject,
    issuer: cert.issuer,
    serial: cert.serialNumber,
    dns: names.filter((n) => n.type === "dns").map((n) => n.value),
    ips: names.filter((n) => n.type === "ip").map((n) => n.value),
    roles: names.filter((n) => n.type === "url" && n.value.startsWith(ROLE_URI_PREFIX))
      .map((n) => n.value.slice(ROLE_URI_PREFIX.length)),
    notBefore: cert.notBefore.toISOString(),
    notAfter: cert.notAfter.toISOString(),
    ca: cert.getExtension(x.BasicConstraintsExtension)?.ca ?? false,
    keyUsage: KEY_USAGE_NAMES.filter((_, i) => (ku & (1 << i)) !== 0),
    extKeyUsage: eku.map((o) =>
      o === OID_SERVER_AUTH ? "serverAuth" : o === OID_CLIENT_AUTH ? "clientAuth" : o
    ),
    sha256: hex(await cert.getThumbprint("SHA-256")),
  };
}
