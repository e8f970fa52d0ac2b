/**
 * Runtime authentication with cluster identities: loading a host's identity (`host.crt`,
 * `host.key`, `ca.crt`), checking a peer's certificate against the cluster CA, and signing and
 * checking the transport's proofs of identity. Making the CA and issuing certificates is
 * `cli/ca_admin.ts`.
 */
import { join } from "node:path";
import {
  CERT_PEM,
  checkDirExists,
  checkKeyMode,
  commonName,
  EC,
  FILES,
  IdentityError,
  importPrivateKey,
  keyMatches,
  lib,
  OID_CLIENT_AUTH,
  OID_SERVER_AUTH,
  parseCert,
  pemBody,
  readText,
  SIGNING,
  toPem,
} from "./x509.ts";
import { CRL_FILE } from "./revocation.ts";
import { isRole, type Role, ROLES } from "../rpc/roles.ts";

/** A host identity as PEM text, ready for `Deno.listenTls`, `Deno.connectTls` or QUIC. */
export interface Identity {
  /** Host certificate (PEM). */
  certPem: string;
  /** Host private key (PKCS#8 PEM). */
  keyPem: string;
  /** Cluster CA certificate (PEM). */
  caPem: string;
  /** The cluster CA's revocation list (`ca.crl`, PEM), when the directory holds one. */
  crlPem?: string;
}

/** A certificate the cluster CA issued, as a peer presented it. */
export interface PeerIdentity {
  /** Host name: its DNS subjectAltName, else its CN. */
  host: string;
  /** Its role; a certificate without one (issued before roles) has none and is refused. */
  role?: Role;
  /** Every DNS and IP subjectAltName, for checking that a server is the one dialed. */
  names: string[];
  /** SHA-256 of its DER, for binding it into a proof. */
  sha256: Uint8Array<ArrayBuffer>;
  /** Its serial number (hex), which a CRL names to revoke it. */
  serial: string;
  /** When it expires, which a long-lived connection re-checks. */
  notAfter: Date;
}

/** The verdict on a peer's certificate. */
export type PeerVerdict = ({ ok: true } & PeerIdentity) | { ok: false; reason: string };

/** The subjectAltName URI that states a certificate's role (`urn:dcres:role:agent`). */
export const ROLE_URI_PREFIX = "urn:dcres:role:";

/**
 * A DER certificate as PEM, e.g. the `raw` of `node:tls`'s `getPeerCertificate()`, for
 * `verifyPeerCertificate`.
 */
export function certificatePem(der: Uint8Array): string {
  return toPem(der, "CERTIFICATE");
}

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
  const crlFile = join(dir, CRL_FILE);
  let crlPem: string | undefined;
  try {
    crlPem = Deno.readTextFileSync(crlFile);
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound)) {
      throw new IdentityError(
        `${crlFile}: cannot read the revocation list: ${(e as Error).message}`,
      );
    }
  }
  return crlPem === undefined ? { certPem, keyPem, caPem } : { certPem, keyPem, caPem, crlPem };
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
  const items = san?.names.items ?? [];
  const dns = items.find((n) => n.type === "dns")?.value;
  const host = dns ?? commonName(cert.subject);
  if (!host) return { ok: false, reason: `${who} names no host (no DNS subjectAltName or CN)` };
  const roles = items.filter((n) => n.type === "url" && n.value.startsWith(ROLE_URI_PREFIX))
    .map((n) => n.value.slice(ROLE_URI_PREFIX.length));
  if (roles.length > 1 || (roles.length === 1 && !isRole(roles[0]))) {
    return {
      ok: false,
      reason: `${who} states roles ${roles.join(", ")}; one of ${ROLES.join(", ")} is allowed`,
    };
  }
  return {
    ok: true,
    host,
    role: roles[0] as Role | undefined,
    names: items.filter((n) => n.type === "dns" || n.type === "ip").map((n) => n.value),
    sha256: new Uint8Array(await cert.getThumbprint("SHA-256")),
    serial: cert.serialNumber,
    notAfter: cert.notAfter,
  };
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
