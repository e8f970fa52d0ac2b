/**
 * Revoked certificates: the cluster CA's X.509 CRL (`ca.crl`, PEM, written by `dcres ca revoke`),
 * read from a host's identity directory at start and again whenever the file changes. A CRL counts
 * only when the cluster CA signed it, and a reload never goes back to an older CRL than the one
 * held, so replacing the file with an earlier CRL cannot un-revoke a certificate.
 */
import { join } from "node:path";
import { IdentityError, lib, parseCert } from "./x509.ts";

/** The CRL's file name, beside `ca.crt` in a CA directory and in an identity directory. */
export const CRL_FILE = "ca.crl";

/** A serial number as hex, the one spelling both certificates and CRL entries are compared in. */
export function serialKey(hex: string): string {
  return hex.toLowerCase().replace(/^(00)+(?=.)/, "");
}

/** A CRL's content once its signature is checked. */
export interface CrlContent {
  /** When the CA made it. */
  thisUpdate: Date;
  /** Revoked serial numbers (`serialKey` spelling) and when each was revoked. */
  revoked: Map<string, Date>;
}

/** Parses a PEM CRL and checks that the cluster CA `caPem` issued and signed it; throws IdentityError. */
export async function readCrl(pem: string, caPem: string, what: string): Promise<CrlContent> {
  const x = await lib();
  const ca = parseCert(x, caPem);
  if (!ca) throw new IdentityError(`${what}: the cluster CA certificate does not parse`);
  let crl;
  try {
    crl = new x.X509Crl(pem);
  } catch (e) {
    throw new IdentityError(`${what}: not a PEM X.509 CRL (${(e as Error).message})`);
  }
  if (crl.issuer !== ca.subject) {
    throw new IdentityError(`${what}: issued by "${crl.issuer}", not the cluster CA`);
  }
  let signed = false;
  try {
    signed = await crl.verify({ publicKey: ca.publicKey });
  } catch {
    signed = false;
  }
  if (!signed) throw new IdentityError(`${what}: its signature is not the cluster CA's`);
  return {
    thisUpdate: crl.thisUpdate,
    revoked: new Map(crl.entries.map((e) => [serialKey(e.serialNumber), e.revocationDate])),
  };
}

/**
 * The revoked serials an agent refuses, from `ca.crl` in its identity directory (none when the file
 * is absent). `refresh` re-reads it when its mtime or size changed; a bad or older file is reported
 * and the list held is kept.
 */
export class Revocations {
  #held: CrlContent = { thisUpdate: new Date(0), revoked: new Map() };
  #stamp = "";

  private constructor(
    private readonly file: string,
    private readonly caPem: string,
    private readonly log: (msg: string, props: Record<string, unknown>) => void,
  ) {}

  /** Loads `ca.crl` of identity directory `dir`; a CRL present but bad stops the start (IdentityError). */
  static async load(
    dir: string,
    caPem: string,
    log: (msg: string, props: Record<string, unknown>) => void = () => {},
  ): Promise<Revocations> {
    const r = new Revocations(join(dir, CRL_FILE), caPem, log);
    await r.refresh(true);
    return r;
  }

  /** Revoked serials held now. */
  get count(): number {
    return this.#held.revoked.size;
  }

  /** When `serialHex` was revoked, or undefined when it is not. */
  revoked(serialHex: string): Date | undefined {
    return this.#held.revoked.get(serialKey(serialHex));
  }

  /** Re-reads the file when it changed since the last read; true when the list held changed. */
  async refresh(strict = false): Promise<boolean> {
    let st: Deno.FileInfo;
    try {
      st = await Deno.stat(this.file);
    } catch (e) {
      if (e instanceof Deno.errors.NotFound) return false;
      throw e;
    }
    const stamp = `${st.mtime?.getTime()}:${st.size}`;
    if (stamp === this.#stamp) return false;
    this.#stamp = stamp;
    try {
      const next = await readCrl(await Deno.readTextFile(this.file), this.caPem, this.file);
      if (next.thisUpdate < this.#held.thisUpdate) {
        throw new IdentityError(
          `${this.file}: made ${next.thisUpdate.toISOString()}, older than the CRL held (${this.#held.thisUpdate.toISOString()})`,
        );
      }
      this.#held = next;
      this.log("loaded {file}: {n} revoked certificates", {
        file: this.file,
        n: next.revoked.size,
      });
      return true;
    } catch (e) {
      if (strict) throw e;
      this.log("kept the revocation list held: {reason}", { reason: (e as Error).message });
      return false;
    }
  }
}
