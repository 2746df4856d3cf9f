// A VM's egress policy: which destinations beyond the host its guest may open connections to.
// The default ("internet") is the public internet only: link-local (cloud metadata), RFC 1918,
// CGNAT, loopback, multicast/reserved, kiln's own subnet and the host's own networks stay
// unreachable unless a CIDR in `allow` opens them. The host itself is never a destination here:
// what a guest may reach on the host is the input policy (src/net/ruleset.ts), fixed.
import { KilnError } from '../errors.ts';
import { toDotted, toInt } from './ipv4.ts';

/** Normalised form, kept in the store. */
export interface EgressPolicy {
  /** Public (non-private) IPv4 destinations. */
  internet: boolean;
  /** CIDRs reachable whatever `internet` says, private ranges included. */
  allow: string[];
}

/** What the API, SDK and CLI take: a name, or an allow-list (optionally plus the internet). */
export type EgressSpec = 'internet' | 'none' | { allow: string[]; internet?: boolean };

export const DEFAULT_EGRESS: EgressPolicy = { internet: true, allow: [] };
export const MAX_EGRESS_CIDRS = 64;

/** Ranges that are not "the internet": never reachable by default. */
export const NON_PUBLIC_V4: readonly string[] = [
  '0.0.0.0/8',
  '10.0.0.0/8',
  '100.64.0.0/10', // CGNAT (RFC 6598)
  '127.0.0.0/8',
  '169.254.0.0/16', // link-local: cloud metadata endpoints
  '172.16.0.0/12',
  '192.168.0.0/16',
  '224.0.0.0/4', // multicast
  '240.0.0.0/4', // reserved, broadcast
];

/** Parses `a.b.c.d/n` (or a bare address, taken as /32); host bits must be zero. */
export function parseCidr(text: string): string {
  const m = /^(\d{1,3}(?:\.\d{1,3}){3})(?:\/(\d{1,2}))?$/.exec(String(text));
  const bad = (why: string) => new KilnError('KILN_ERR_VALIDATION', `egress allow entry ${JSON.stringify(text)}: ${why}`);
  if (!m) throw bad('expected an IPv4 CIDR like 203.0.113.0/24');
  const prefix = m[2] === undefined ? 32 : Number(m[2]);
  if (prefix > 32) throw bad('prefix must be 0 to 32');
  let n: number;
  try {
    n = toInt(m[1]!);
  } catch {
    throw bad('not an IPv4 address');
  }
  const size = 2 ** (32 - prefix);
  if (n % size !== 0) throw bad(`host bits set (did you mean ${toDotted(n - (n % size))}/${prefix}?)`);
  return `${m[1]}/${prefix}`;
}

export function normalizeEgress(spec: EgressSpec | undefined | null): EgressPolicy {
  if (spec === undefined || spec === null || spec === 'internet') return { ...DEFAULT_EGRESS, allow: [] };
  if (spec === 'none') return { internet: false, allow: [] };
  if (typeof spec !== 'object' || !Array.isArray(spec.allow)) {
    throw new KilnError('KILN_ERR_VALIDATION', 'egress must be "internet", "none" or {"allow": ["CIDR", ...], "internet"?: boolean}');
  }
  if (spec.allow.length > MAX_EGRESS_CIDRS) throw new KilnError('KILN_ERR_VALIDATION', `egress allows at most ${MAX_EGRESS_CIDRS} CIDRs`);
  return { internet: spec.internet === true, allow: [...new Set(spec.allow.map(parseCidr))] };
}

/** The API's view: the names where they fit, else the object. */
export function egressView(p: EgressPolicy): EgressSpec {
  if (p.allow.length === 0) return p.internet ? 'internet' : 'none';
  return p.internet ? { allow: p.allow, internet: true } : { allow: p.allow };
}

/** The CLI's `--egress`: internet | none | CIDR[,CIDR...] with an optional `internet` among them. */
export function parseEgressFlag(text: string): EgressSpec {
  const parts = text.split(',').map((s) => s.trim()).filter(Boolean);
  if (parts.length === 1 && (parts[0] === 'internet' || parts[0] === 'none')) return parts[0];
  const internet = parts.includes('internet');
  const allow = parts.filter((p) => p !== 'internet');
  if (allow.includes('none')) throw new KilnError('KILN_ERR_VALIDATION', '--egress none cannot be combined with CIDRs');
  return internet ? { allow, internet } : { allow };
}
