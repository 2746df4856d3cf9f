// The agent's challenge-response (docs/agent-protocol.md, "Authentication"): proofs are
// HMAC-SHA256 under the VM's agent token over a purpose label, both nonces and (host side)
// the request, so the token itself never crosses the wire, a proof made for one purpose or
// one connection is useless for another, and kilnd sends nothing secret to a peer that has
// not proven it holds the VM's key. kiln-init computes the same in C (kiln-init/auth.c).
import { createHmac, randomBytes, timingSafeEqual } from 'node:crypto';

export const NONCE_BYTES = 32;
const LABEL_GUEST = 'kiln-agent-v2 session guest';
const LABEL_HOST = 'kiln-agent-v2 session host';
const LABEL_HELLO = 'kiln-agent-v2 hello';

export const newNonce = (): Buffer => randomBytes(NONCE_BYTES);

function mac(token: string, label: string, ...parts: Buffer[]): Buffer {
  const h = createHmac('sha256', token).update(label).update(Buffer.of(0));
  for (const p of parts) h.update(p);
  return h.digest();
}

/** What the guest must answer to a session challenge. */
export const guestSessionProof = (token: string, hostNonce: Buffer, guestNonce: Buffer): Buffer => mac(token, LABEL_GUEST, hostNonce, guestNonce);

/** kilnd's proof in the open frame: binds both nonces and the request bytes that follow it. */
export const hostSessionProof = (token: string, hostNonce: Buffer, guestNonce: Buffer, request: Buffer): Buffer =>
  mac(token, LABEL_HOST, hostNonce, guestNonce, request);

/** The control channel's hello proof over kilnd's nonce (and the guest's, so kilnd cannot pick both). */
export const helloProof = (token: string, hostNonce: Buffer, guestNonce: Buffer): Buffer => mac(token, LABEL_HELLO, hostNonce, guestNonce);

/** Constant-time comparison of a 32-byte proof given as hex. */
export function proofMatches(expected: Buffer, givenHex: string): boolean {
  const given = Buffer.from(givenHex, 'hex');
  return given.length === expected.length && timingSafeEqual(given, expected);
}
