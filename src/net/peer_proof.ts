/**
 * The proof each end of a QUIC connection gives of its cluster identity (docs/SECURITY.md, "How
 * peers prove who they are"). Both ends sign one transcript: both nonces, both certificates' SHA-256
 * and the address the client dialed. A cluster member that passes another agent's messages through
 * cannot make the proofs fit: the client's transcript names the member it dialed, which the agent
 * behind it does not answer to, and the agent's certificate does not name that member either.
 * Certificates are checked against the cluster CA alone, whatever the TLS layer trusts.
 */
import { encodeCbor } from "../codec/cbor.ts";
import type { Role } from "../rpc/roles.ts";
import { isHostPort, parseHostPort } from "./address.ts";
import type { PeerIdentity } from "./identity.ts";

/** What one proof covers. */
export interface Transcript {
  /** The client's nonce (32 random bytes). */
  clientNonce: Uint8Array;
  /** The server's nonce (32 random bytes). */
  serverNonce: Uint8Array;
  /** SHA-256 of the client's certificate. */
  clientCert: Uint8Array;
  /** SHA-256 of the server's certificate. */
  serverCert: Uint8Array;
  /** The address the client dialed, HOST:PORT as it gave it. */
  dialed: string;
}

/** Which end signs: the two proofs over one transcript differ, so neither can stand for the other. */
export type ProofSide = "server" | "client";

/** Bytes of a nonce. */
export const NONCE_BYTES = 32;

/** The bytes `side` signs for `t`: a labelled, unambiguous encoding of every field. */
export function proofBytes(side: ProofSide, t: Transcript): Uint8Array<ArrayBuffer> {
  const enc = encodeCbor([
    `dcres-proof-v2 ${side}`,
    t.clientNonce,
    t.serverNonce,
    t.clientCert,
    t.serverCert,
    t.dialed,
  ]);
  return new Uint8Array(enc);
}

/** The host part of a dialed HOST:PORT, lower-cased; the whole text when it is not one. */
export function dialedHost(dialed: string): string {
  return (isHostPort(dialed) ? parseHostPort(dialed).hostname : dialed).toLowerCase();
}

/** True when a certificate with subjectAltNames `names` answers to the dialed HOST:PORT. */
export function answersTo(names: readonly string[], dialed: string): boolean {
  if (!isHostPort(dialed)) return false;
  const host = dialedHost(dialed);
  return names.some((n) => n.toLowerCase() === host);
}

/** Why a server's certificate is not the agent the client dialed, or undefined when it is. */
export function serverMismatch(server: PeerIdentity, dialed: string): string | undefined {
  if (server.role !== "agent") {
    return `presented ${describeRole(server.role)} certificate for ${server.host}, not an agent's`;
  }
  if (!answersTo(server.names, dialed)) {
    return `presented the certificate of ${server.host} (${
      server.names.join(", ")
    }), which does not name ${dialedHost(dialed)}`;
  }
  return undefined;
}

/** "an operator", "a coordinator", or "a role-less" for a certificate issued before roles. */
export function describeRole(role: Role | undefined): string {
  if (role === undefined) return "a role-less";
  return `${/^[aeiou]/.test(role) ? "an" : "a"} ${role}`;
}
