/** `dcres ca init|issue`: the cluster CA and host certificates for mutual TLS between agents. */
import { IdentityError } from "../net/x509.ts";
import { DEFAULT_HOST_DAYS, initCa, issueHost, MAX_HOST_DAYS } from "./ca_admin.ts";
import { caCrl, shareCrl } from "./ca_revoke.ts";
import { EXIT, type GlobalOptions, report } from "./context.ts";
import { UsageError } from "./units.ts";
import { isRole, type Role, ROLES } from "../rpc/roles.ts";

/** Flags of `ca init`. */
export interface CaInitFlags {
  /** Directory for `ca.crt` and `ca.key` (made 0700 if missing). */
  dir: string;
  /** Replace an existing CA. */
  force?: boolean;
}

/** Flags of `ca issue`. */
export interface CaIssueFlags {
  /** CA directory (from `ca init`). */
  ca: string;
  /** Host name: CN and DNS subjectAltName. */
  host: string;
  /** IP subjectAltNames (repeatable). */
  ip?: string[];
  /** Validity in days (text from the command line). */
  days?: string;
  /** The certificate's role: agent (default), operator or coordinator. */
  role?: string;
  /** Output directory for `host.crt`, `host.key`, `ca.crt`. */
  out: string;
  /** Replace an existing host identity. */
  force?: boolean;
}

/** Collects a repeatable option's values (commander's argParser for `--ip`). */
export function collect(value: string, previous: string[] = []): string[] {
  return [...previous, value];
}

/** Runs `fn`, turning an IdentityError about a malformed flag into a UsageError (exit code 2). */
async function usageErrors<T>(fn: () => Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (e) {
    if (e instanceof IdentityError && e.usage) throw new UsageError(e.message);
    throw e;
  }
}

function parseDays(text: string | undefined): number {
  if (text === undefined) return DEFAULT_HOST_DAYS;
  const n = Number(text);
  if (!/^\d+$/.test(text.trim()) || n < 1 || n > MAX_HOST_DAYS) {
    throw new UsageError(`--days ${text}: must be a whole number from 1 to ${MAX_HOST_DAYS}`);
  }
  return n;
}

function parseRole(text: string | undefined): Role {
  const role = text?.trim() ?? "agent";
  if (!isRole(role)) {
    throw new UsageError(`--role ${text}: not a role; use one of ${ROLES.join(", ")}`);
  }
  return role;
}

/** `ca init --dir DIR [--force]`: makes a cluster CA (ECDSA P-256, 10 years). */
export async function caInit(g: GlobalOptions, f: CaInitFlags): Promise<number> {
  if (!f.dir?.trim()) {
    throw new UsageError("--dir: empty; give the CA directory, e.g. /etc/dcres/ca");
  }
  const info = await usageErrors(() => initCa(f.dir, { force: f.force }));
  report(g, info, () =>
    [
      `cluster CA "${info.subject}" made in ${info.dir}, valid until ${info.notAfter.slice(0, 10)}`,
      `  ${info.certFile}  certificate: give it to every host (dcres ca issue copies it)`,
      `  ${info.keyFile}  private key (0600): keep it secret; only issuing needs it`,
      `  sha256 ${info.sha256}`,
      `next: dcres ca issue --ca ${f.dir} --host NAME [--ip ADDR] --out DIR`,
    ].join("\n"));
  return EXIT.OK;
}

/** `ca issue --ca DIR --host NAME [--ip ADDR]... [--days N] --out DIR [--force]`: a host certificate. */
export async function caIssue(g: GlobalOptions, f: CaIssueFlags): Promise<number> {
  if (!f.ca?.trim()) {
    throw new UsageError("--ca: empty; give the CA directory made by dcres ca init");
  }
  if (!f.out?.trim()) {
    throw new UsageError("--out: empty; give the directory for the host identity");
  }
  const days = parseDays(f.days);
  // A bad list in the CA directory stops the issue before anything is written.
  const crl = await caCrl(f.ca);
  const info = await usageErrors(() =>
    issueHost({
      caDir: f.ca,
      host: f.host ?? "",
      ips: f.ip,
      days,
      role: parseRole(f.role),
      outDir: f.out,
      force: f.force,
    })
  );
  const crlFile = crl && await shareCrl(crl, info.dir);
  const names = [`DNS:${info.host}`, ...info.ips.map((ip) => `IP:${ip}`)].join(", ");
  report(g, { ...info, ...(crlFile ? { crlFile } : {}) }, () =>
    [
      `${info.role} certificate for ${names}, signed by "${info.issuer}", valid until ${
        info.notAfter.slice(0, 10)
      }`,
      `  ${info.certFile}  certificate (TLS server and client)`,
      `  ${info.keyFile}  private key (0600)`,
      `  ${info.caFile}  cluster CA certificate`,
      ...(crlFile ? [`  ${crlFile}  the CA's revocation list`] : []),
      `  serial ${info.serial}  sha256 ${info.sha256}`,
    ].join("\n"));
  return EXIT.OK;
}
