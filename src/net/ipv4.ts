// IPv4 arithmetic for kiln's one VM subnet. Addresses are plain unsigned 32-bit numbers
// inside, dotted strings at every boundary (store, API, kernel command line).
import { KilnError } from '../errors.ts';

export interface Subnet {
  /** Network address, dotted. */
  network: string;
  prefix: number;
  /** The first host address: the bridge's own address and the VMs' gateway. */
  gateway: string;
  /** First and last address a VM may get (gateway and broadcast excluded). */
  first: number;
  last: number;
}

export function toInt(addr: string): number {
  const parts = addr.split('.');
  if (parts.length !== 4 || parts.some((p) => !/^\d{1,3}$/.test(p) || Number(p) > 255)) {
    throw new KilnError('KILN_ERR_VALIDATION', `not an IPv4 address: ${JSON.stringify(addr)}`);
  }
  return parts.reduce((n, p) => n * 256 + Number(p), 0);
}

export function toDotted(n: number): string {
  return [n >>> 24, (n >>> 16) & 255, (n >>> 8) & 255, n & 255].join('.');
}

export function parseSubnet(cidr: string): Subnet {
  const m = /^([\d.]+)\/(\d{1,2})$/.exec(cidr);
  const prefix = Number(m?.[2]);
  if (!m || prefix < 8 || prefix > 29) {
    throw new KilnError('KILN_ERR_VALIDATION', `VM subnet must be IPv4 CIDR with a prefix of /8 to /29, got ${JSON.stringify(cidr)}`);
  }
  const size = 2 ** (32 - prefix);
  const base = toInt(m[1]!) - (toInt(m[1]!) % size);
  return { network: toDotted(base), prefix, gateway: toDotted(base + 1), first: base + 2, last: base + size - 2 };
}

export function contains(subnet: Subnet, addr: string): boolean {
  const n = toInt(addr);
  const base = toInt(subnet.network);
  return n >= base && n < base + 2 ** (32 - subnet.prefix);
}

export function overlaps(a: { network: string; prefix: number }, b: { network: string; prefix: number }): boolean {
  const prefix = Math.min(a.prefix, b.prefix);
  const size = 2 ** (32 - prefix);
  return Math.floor(toInt(a.network) / size) === Math.floor(toInt(b.network) / size);
}

/** Lowest free VM address, or null when the subnet is full. */
export function lowestFree(subnet: Subnet, taken: ReadonlySet<string>): string | null {
  for (let n = subnet.first; n <= subnet.last; n++) {
    const a = toDotted(n);
    if (!taken.has(a)) return a;
  }
  return null;
}

/** Locally administered MAC derived from the address: stable across restarts, unique per subnet. */
export function macFor(addr: string): string {
  const n = toInt(addr);
  return ['02', '6b', n >>> 24, (n >>> 16) & 255, (n >>> 8) & 255, n & 255]
    .map((b) => (typeof b === 'string' ? b : b.toString(16).padStart(2, '0')))
    .join(':');
}
