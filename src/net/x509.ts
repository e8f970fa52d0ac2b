/**
 * The x509 and PEM layer under cluster identities: the lazily loaded `@peculiar/x509` library, the
 * key and signature algorithms (ECDSA P-256 with SHA-256), PEM parsing, and reading identity files
 * with errors that name the file. Used by runtime authentication (`identity.ts`) and by CA
 * administration (`cli/ca_admin.ts`).
 */
import type * as X509 from "@peculiar/x509";

/** File names inside a CA directory and a host identity directory. */
export const FILES = {
  caCert: "ca.crt",
  caKey: "ca.key",
  hostCert: "host.crt",
  hostKey: "host.key",
} as const;

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

// ---------------------------------------------------------------------------------------------
// The x509 library, loaded on first use.
//
// @peculiar/x509 depends on tsyringe, which refuses to load unless a `Reflect.getMetadata`
// polyfill is installed first. tsyringe only reads metadata for x509's argument-less algorithm
// classes, so a small metadata store is enough; it is installed just before the dynamic import
// (a static import would be evaluated before any code of this module could run). Loading lazily
// also keeps the library out of every other dcres command's start-up.

/** The `@peculiar/x509` module. */
export type Lib = typeof X509;
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

/** The x509 library, loaded (with its metadata polyfill) on first use. */
export function lib(): Promise<Lib> {
  return libPromise ??= (async () => {
    installReflectMetadata();
    const m = await import("@peculiar/x509");
    m.cryptoProvider.set(crypto);
    return m;
  })();
}

/** Key algorithm of every dcres key: ECDSA on P-256. */
export const EC: EcKeyGenParams = { name: "ECDSA", namedCurve: "P-256" };
/** Signature algorithm of certificates and identity proofs: ECDSA with SHA-256. */
export const SIGNING: EcdsaParams = { name: "ECDSA", hash: "SHA-256" };
/** extKeyUsage serverAuth. */
export const OID_SERVER_AUTH = "1.3.6.1.5.5.7.3.1";
/** extKeyUsage clientAuth. */
export const OID_CLIENT_AUTH = "1.3.6.1.5.5.7.3.2";

/** Reads an identity file; an IdentityError names the file, what it is and `hint`. */
export function readText(path: string, what: string, hint: string): string {
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
export function checkKeyMode(path: string): void {
  const mode = Deno.statSync(path).mode;
  if (mode !== null && (mode & 0o077) !== 0) {
    throw new IdentityError(
      `${path}: mode 0${(mode & 0o777).toString(8)} lets other users read the private key; ` +
        `run chmod 600 ${path}`,
    );
  }
}

/** Refuses a missing or non-directory `dir` with an IdentityError naming `flag` and `hint`. */
export function checkDirExists(dir: string, flag: string, hint: string): void {
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

/** The first PEM certificate block in a text. */
export const CERT_PEM = /-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/;

/** Bytes as lowercase hex. */
export function hex(buf: ArrayBuffer): string {
  return Array.from(new Uint8Array(buf), (b) => b.toString(16).padStart(2, "0")).join("");
}

/** The DER inside the first PEM block labelled `label`, or null when there is none. */
export function pemBody(pem: string, label: string): Uint8Array<ArrayBuffer> | null {
  const m = new RegExp(`-----BEGIN ${label}-----([\\s\\S]+?)-----END ${label}-----`).exec(pem);
  if (!m) return null;
  try {
    const bin = atob(m[1].replace(/\s+/g, ""));
    return Uint8Array.from(bin, (c) => c.charCodeAt(0));
  } catch {
    return null;
  }
}

/** DER as a PEM block labelled `label`, 64 columns. */
export function toPem(der: Uint8Array, label: string): string {
  const b64 = btoa(Array.from(der, (b) => String.fromCharCode(b)).join(""));
  return `-----BEGIN ${label}-----\n${b64.match(/.{1,64}/g)!.join("\n")}\n-----END ${label}-----\n`;
}

/** A PKCS#8 DER private key as PEM. */
export function keyToPem(der: ArrayBuffer): string {
  return toPem(new Uint8Array(der), "PRIVATE KEY");
}

/** The first certificate in `pem`, or null when it has none or it does not parse. */
export function parseCert(x: Lib, pem: string): X509.X509Certificate | null {
  const m = CERT_PEM.exec(pem);
  if (!m) return null;
  try {
    return new x.X509Certificate(m[0]);
  } catch {
    return null;
  }
}

/** A PKCS#8 PEM P-256 private key for signing, or null when `pem` is not one. */
export async function importPrivateKey(pem: string): Promise<CryptoKey | null> {
  const der = pemBody(pem, "PRIVATE KEY");
  if (!der) return null;
  try {
    return await crypto.subtle.importKey("pkcs8", der, EC, true, ["sign"]);
  } catch {
    return null;
  }
}

/** True when the private key belongs to the certificate (same P-256 public point). */
export async function keyMatches(key: CryptoKey, cert: X509.X509Certificate): Promise<boolean> {
  const priv = await crypto.subtle.exportKey("jwk", key);
  let pub: JsonWebKey;
  try {
    pub = await crypto.subtle.exportKey("jwk", await cert.publicKey.export(EC, ["verify"]));
  } catch {
    return false;
  }
  return priv.crv === pub.crv && priv.x === pub.x && priv.y === pub.y;
}

/** The CN of a distinguished name, unescaped, or the whole name when it has none. */
export function commonName(name: string): string {
  const m = /(?:^|,\s*)CN=((?:[^,\\]|\\.)*)/.exec(name);
  return m ? m[1].replace(/\\(.)/g, "$1") : name;
}
