/**
 * Cluster identities for mutual TLS: a cluster CA (`ca.crt`, `ca.key`), host certificates usable as
 * TLS server and client (`host.crt`, `host.key` and a copy of `ca.crt`), and the checks an agent
 * applies to a peer's certificate. ECDSA P-256 with SHA-256, made in-process with
 * `@peculiar/x509` and WebCrypto; PEM files, keys 0600, directories 0700.
 */
import { join, resolve } from "node:path";
import type * as X509 from "@peculiar/x509";
import { writeFileAtomic } from "../ffi/atomic_file.ts";

/** File names inside a CA directory and a host identity directory. */
export const FILES = {
  caCert: "ca.crt",
  caKey: "ca.key",
  hostCert: "host.crt",
  hostKey: "host.key",
} as const;

/** Validity of a new cluster CA, in years. */
export const CA_YEARS = 10;
/** Default validity of a host certificate, in days. */
export const DEFAULT_HOST_DAYS = 825;
/** Longest host certificate validity accepted, in days (the CA's own lifetime). */
export const MAX_HOST_DAYS = 3650;
/** A host certificate is valid from this long before it is issued, for clock skew between hosts. */
export const CLOCK_SKEW_MS = 5 * 60_000;

/**
 * An identity operation failed on bad input or files; the one-line message names the file or flag
 * and what to do. `usage` is true when the input given on the command line itself is malformed.
 */
export class IdentityError extends Error {
  /** True for a malformed flag value (exit code 2 in the CLI), false for a file problem. */
  readonly usage: boolean;
  /** A one-line `message`; `opts.usage` marks a malformed flag value. */
  constructor(message: string, opts: { usage?: boolean } = {}) {
    super(message);
    this.name = "IdentityError";
    this.usage = opts.usage ?? false;
  }
}

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

/** A host identity as PEM text, ready for `Deno.listenTls`, `Deno.connectTls` or QUIC. */
export interface Identity {
  /** Host certificate (PEM). */
  certPem: string;
  /** Host private key (PKCS#8 PEM). */
  keyPem: string;
  /** Cluster CA certificate (PEM). */
  caPem: string;
}

/** The verdict on a peer's certificate. */
export type PeerVerdict = { ok: true; host: string } | { ok: false; reason: string };

// ---------------------------------------------------------------------------------------------
// The x509 library, loaded on first use.
//
// @peculiar/x509 depends on tsyringe, which refuses to load unless a `Reflect.getMetadata`
// polyfill is installed first. tsyringe only reads metadata for x509's argument-less algorithm
// classes, so a small metadata store is enough; it is installed just before the dynamic import
// (a static import would be evaluated before any code of this module could run). Loading lazily
// also keeps the library out of every other dcres command's start-up.

type Lib = typeof X509;
let libPromise: Promise<Lib> | undefined;

function installReflectMetadata(): void {
  const r = Reflect as unknown as Record<string, unknown>;
  if (typeof r.getMetadata === "function") return;
  const store = new WeakMap<object, Map<unknown, unknown>>();
  const own = (key: unknown, target: object) => store.get(target)?.get(key);
  Object.assign(Reflect, {
    defineMetadata(key: unknown, value: unknown, target: object) {
      let m = store.get(target);
      if (!m) store.set(target, m = new Map());
      m.set(key, value);
    },
    getOwnMetadata: own,
    hasOwnMetadata: (key: unknown, target: object) => store.get(target)?.has(key) ?? false,
    getMetadata(key: unknown, target: object) {
      for (let t: object | null = target; t; t = Object.getPrototypeOf(t)) {
        const m = store.get(t);
        if (m?.has(key)) return m.get(key);
      }
      return undefined;
    },
  });
}

function lib(): Promise<Lib> {
  return libPromise ??= (async () => {
    installReflectMetadata();
    const m = await import("@peculiar/x509");
    m.cryptoProvider.set(crypto);
    return m;
  })();
}

const EC: EcKeyGenParams = { name: "ECDSA", namedCurve: "P-256" };
const SIGNING: EcdsaParams = { name: "ECDSA", hash: "SHA-256" };
const OID_SERVER_AUTH = "1.3.6.1.5.5.7.3.1";
const OID_CLIENT_AUTH = "1.3.6.1.5.5.7.3.2";

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

function readText(path: string, what: string, hint: string): string {
  try {
    return Deno.readTextFileSync(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) {
      throw new IdentityError(`${path}: missing ${what}; ${hint}`);
    }
    if (e instanceof Deno.errors.PermissionDenied) {
      throw new IdentityError(`${path}: permission denied reading the ${what}; run as its owner`);
    }
    throw new IdentityError(`${path}: cannot read the ${what}: ${(e as Error).message}`);
  }
}

/** Refuses a private key file that group or others may read (as ssh does). */
function checkKeyMode(path: string): void {
  const mode = Deno.statSync(path).mode;
  if (mode !== null && (mode & 0o077) !== 0) {
    throw new IdentityError(
      `${path}: mode 0${(mode & 0o777).toString(8)} lets other users read the private key; ` +
        `run chmod 600 ${path}`,
    );
  }
}

function checkDirExists(dir: string, flag: string, hint: string): void {
  let st: Deno.FileInfo;
  try {
    st = Deno.statSync(dir);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) {
      throw new IdentityError(`${flag} ${dir}: no such directory; ${hint}`);
    }
    throw new IdentityError(`${flag} ${dir}: ${(e as Error).message}`);
  }
  if (!st.isDirectory) throw new IdentityError(`${flag} ${dir}: not a directory; ${hint}`);
}

// ---------------------------------------------------------------------------------------------
// PEM and keys

const CERT_PEM = /-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/;

function hex(buf: ArrayBuffer): string {
  return Array.from(new Uint8Array(buf), (b) => b.toString(16).padStart(2, "0")).join("");
}

function pemBody(pem: string, label: string): Uint8Array<ArrayBuffer> | null {
  const m = new RegExp(`-----BEGIN ${label}-----([\\s\\S]+?)-----END ${label}-----`).exec(pem);
  if (!m) return null;
  try {
    const bin = atob(m[1].replace(/\s+/g, ""));
    return Uint8Array.from(bin, (c) => c.charCodeAt(0));
  } catch {
    return null;
  }
}

function toPem(der: Uint8Array, label: string): string {
  const b64 = btoa(Array.from(der, (b) => String.fromCharCode(b)).join(""));
  return `-----BEGIN ${label}-----\n${b64.match(/.{1,64}/g)!.join("\n")}\n-----END ${label}-----\n`;
}

function keyToPem(der: ArrayBuffer): string {
  return toPem(new Uint8Array(der), "PRIVATE KEY");
}

/**
 * A DER certificate as PEM, e.g. the `raw` of `node:tls`'s `getPeerCertificate()`, for
 * `verifyPeerCertificate`.
 */
export function certificatePem(der: Uint8Array): string {
  return toPem(der, "CERTIFICATE");
}

function parseCert(x: Lib, pem: string): X509.X509Certificate | null {
  const m = CERT_PEM.exec(pem);
  if (!m) return null;
  try {
    return new x.X509Certificate(m[0]);
  } catch {
    return null;
  }
}

async function importPrivateKey(pem: string): Promise<CryptoKey | null> {
  const der = pemBody(pem, "PRIVATE KEY");
  if (!der) return null;
  try {
    return await crypto.subtle.importKey("pkcs8", der, EC, true, ["sign"]);
  } catch {
    return null;
  }
}

/** True when the private key belongs to the certificate (same P-256 public point). */
async function keyMatches(key: CryptoKey, cert: X509.X509Certificate): Promise<boolean> {
  const priv = await crypto.subtle.exportKey("jwk", key);
  let pub: JsonWebKey;
  try {
    pub = await crypto.subtle.exportKey("jwk", await cert.publicKey.export(EC, ["verify"]));
  } catch {
    return false;
  }
  return priv.crv === pub.crv && priv.x === pub.x && priv.y === pub.y;
}

function commonName(name: string): string {
  const m = /(?:^|,\s*)CN=((?:[^,\\]|\\.)*)/.exec(name);
  return m ? m[1].replace(/\\(.)/g, "$1") : name;
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

interface LoadedCa {
  cert: X509.X509Certificate;
  certPem: string;
  key: CryptoKey;
}

async function loadCa(x: Lib, dir: string, now: Date): Promise<LoadedCa> {
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

// ---------------------------------------------------------------------------------------------
// Using identities

/**
 * Reads the host identity in `dir` (`host.crt`, `host.key`, `ca.crt`) as PEM text; throws an
 * IdentityError naming a missing or malformed file, or a key file others may read.
 */
export function loadIdentity(dir: string): Identity {
  const hint = `issue one with: dcres ca issue --ca CA_DIR --host NAME --out ${dir}`;
  checkDirExists(dir, "identity directory", hint);
  const certFile = join(dir, FILES.hostCert);
  const keyFile = join(dir, FILES.hostKey);
  const caFile = join(dir, FILES.caCert);
  const certPem = readText(certFile, "host certificate", hint);
  const keyPem = readText(keyFile, "host private key", hint);
  const caPem = readText(caFile, "cluster CA certificate", `copy ca.crt from the CA directory`);
  if (!CERT_PEM.test(certPem)) {
    throw new IdentityError(`${certFile}: not a PEM certificate; ${hint}`);
  }
  if (!CERT_PEM.test(caPem)) throw new IdentityError(`${caFile}: not a PEM certificate; ${hint}`);
  if (!pemBody(keyPem, "PRIVATE KEY")) {
    throw new IdentityError(`${keyFile}: not a PKCS#8 PEM private key; ${hint}`);
  }
  checkKeyMode(keyFile);
  return { certPem, keyPem, caPem };
}

/**
 * Fully checks the identity in `dir`: `loadIdentity`, the key matches the certificate, and the
 * certificate passes `verifyPeerCertificate` against the directory's CA. Returns it with its host.
 */
export async function checkIdentity(
  dir: string,
  now: Date = new Date(),
): Promise<Identity & { host: string }> {
  const id = loadIdentity(dir);
  const x = await lib();
  const certFile = join(dir, FILES.hostCert);
  const keyFile = join(dir, FILES.hostKey);
  const cert = parseCert(x, id.certPem);
  if (!cert) throw new IdentityError(`${certFile}: not a PEM certificate`);
  const key = await importPrivateKey(id.keyPem);
  if (!key) throw new IdentityError(`${keyFile}: not an ECDSA P-256 private key in PKCS#8 PEM`);
  if (!(await keyMatches(key, cert))) {
    throw new IdentityError(`${keyFile}: does not match ${certFile}; issue the pair again`);
  }
  const v = await verifyPeerCertificate(id.certPem, id.caPem, now);
  if (!v.ok) throw new IdentityError(`${certFile}: ${v.reason}`);
  return { ...id, host: v.host };
}

/**
 * Decides whether a peer's certificate (PEM; the first certificate of a chain) is a dcres host
 * certificate of the cluster CA `caPem` at time `now`: signed by that CA, within its validity,
 * with extKeyUsage serverAuth and clientAuth. On success returns the host name it names.
 */
export async function verifyPeerCertificate(
  certPem: string,
  caPem: string,
  now: Date = new Date(),
): Promise<PeerVerdict> {
  const x = await lib();
  const ca = parseCert(x, caPem);
  if (!ca) return { ok: false, reason: "the cluster CA certificate is not a PEM certificate" };
  const cert = parseCert(x, certPem);
  if (!cert) return { ok: false, reason: "no certificate, or not a PEM certificate" };
  const who = `certificate "${cert.subject}"`;
  const caName = `"${commonName(ca.subject)}"`;

  const caDer = new Uint8Array(ca.rawData);
  const certDer = new Uint8Array(cert.rawData);
  if (caDer.length === certDer.length && caDer.every((b, i) => b === certDer[i])) {
    return { ok: false, reason: `${who} is the cluster CA itself, not a host certificate` };
  }
  if (cert.subject === cert.issuer && await cert.isSelfSigned()) {
    return { ok: false, reason: `${who} is self-signed, not issued by the cluster CA ${caName}` };
  }
  if (cert.issuer !== ca.subject) {
    return {
      ok: false,
      reason: `${who} was issued by "${cert.issuer}", not by the cluster CA ${caName}`,
    };
  }
  let signed = false;
  try {
    signed = await cert.verify({ publicKey: ca.publicKey, signatureOnly: true });
  } catch {
    signed = false;
  }
  if (!signed) {
    return {
      ok: false,
      reason: `${who} names the cluster CA ${caName} as issuer but its signature does not verify`,
    };
  }
  if (now > ca.notAfter) {
    return {
      ok: false,
      reason: `the cluster CA ${caName} expired on ${ca.notAfter.toISOString()}`,
    };
  }
  if (now < cert.notBefore) {
    return { ok: false, reason: `${who} is not valid before ${cert.notBefore.toISOString()}` };
  }
  if (now > cert.notAfter) {
    return { ok: false, reason: `${who} expired on ${cert.notAfter.toISOString()}` };
  }
  if (cert.getExtension(x.BasicConstraintsExtension)?.ca) {
    return { ok: false, reason: `${who} is a CA certificate, not a host certificate` };
  }
  const ku = cert.getExtension(x.KeyUsagesExtension);
  if (ku && !(ku.usages & x.KeyUsageFlags.digitalSignature)) {
    return { ok: false, reason: `${who} lacks keyUsage digitalSignature` };
  }
  const eku = Array.from(cert.getExtension(x.ExtendedKeyUsageExtension)?.usages ?? [], String);
  for (const [oid, name] of [[OID_SERVER_AUTH, "serverAuth"], [OID_CLIENT_AUTH, "clientAuth"]]) {
    if (!eku.includes(oid)) return { ok: false, reason: `${who} lacks extKeyUsage ${name}` };
  }
  const san = cert.getExtension(x.SubjectAlternativeNameExtension);
  const dns = san?.names.items.find((n) => n.type === "dns")?.value;
  const host = dns ?? commonName(cert.subject);
  if (!host) return { ok: false, reason: `${who} names no host (no DNS subjectAltName or CN)` };
  return { ok: true, host };
}

/** Signs `data` with the host key (PEM, PKCS#8 ECDSA P-256), for the transport's proof of identity. */
export async function signWithKey(
  keyPem: string,
  data: Uint8Array<ArrayBuffer>,
): Promise<Uint8Array<ArrayBuffer>> {
  const key = await importPrivateKey(keyPem);
  if (!key) throw new IdentityError("the host key is not a PKCS#8 ECDSA P-256 PEM key");
  return new Uint8Array(await crypto.subtle.sign(SIGNING, key, data));
}

/** True when `sig` over `data` was made with the private key of the certificate `certPem`. */
export async function verifyWithCertificate(
  certPem: string,
  data: Uint8Array<ArrayBuffer>,
  sig: Uint8Array<ArrayBuffer>,
): Promise<boolean> {
  const x = await lib();
  const cert = parseCert(x, certPem);
  if (!cert) return false;
  try {
    const key = await cert.publicKey.export(EC, ["verify"], crypto);
    return await crypto.subtle.verify(SIGNING, key, sig, data);
  } catch {
    return false;
  }
}
