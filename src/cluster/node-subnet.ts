// Each cluster node's VM subnet, from one cluster range (KILN_CLUSTER_CIDR / --cluster-cidr,
// default 10.118.0.0/16 split into /24s): leased in the store at the node's start, so no two
// nodes hand out the same addresses and a VM's address says which node runs it. A node keeps
// its lease across restarts (same node id: its VMs keep their addresses) until it is removed.
// An explicit KILN_CIDR on a node wins over the lease (src/daemon.ts).
import { KilnError } from '../errors.ts';
import { parseSubnet, toDotted, toInt } from '../net/ipv4.ts';
import type { Store } from '../store/store.ts';

export const DEFAULT_CLUSTER_CIDR = '10.118.0.0/16';
export const DEFAULT_NODE_SUBNET_PREFIX = 24;

/** The cluster range, checked: a network of /8../29 with a node prefix inside it. */
export function clusterRange(cidr: string, nodePrefix: number): { network: number; prefix: number; nodePrefix: number } {
  const range = parseSubnet(cidr);
  if (!Number.isInteger(nodePrefix) || nodePrefix < range.prefix || nodePrefix > 29) {
    throw new KilnError('KILN_ERR_VALIDATION', `node subnets of /${nodePrefix} do not fit the cluster range ${cidr} (a prefix from /${range.prefix} to /29)`);
  }
  return { network: toInt(range.network), prefix: range.prefix, nodePrefix };
}

/** The lowest subnet of the range not in `taken` (CIDR strings), or null when all are. */
export function lowestFreeSubnet(cidr: string, nodePrefix: number, taken: ReadonlySet<string>): string | null {
  const r = clusterRange(cidr, nodePrefix);
  const count = 2 ** (nodePrefix - r.prefix);
  const size = 2 ** (32 - nodePrefix);
  for (let i = 0; i < count; i++) {
    const s = `${toDotted(r.network + i * size)}/${nodePrefix}`;
    if (!taken.has(s)) return s;
  }
  return null;
}

/**
 * Leases (or finds) the node's subnet in the store. A full range is
 * KILN_ERR_CLUSTER_RANGE_FULL: the node cannot run VMs until a node is removed or the range grows.
 */
export async function leaseNodeSubnet(store: Store, nodeId: string, cidr: string, nodePrefix: number): Promise<string> {
  clusterRange(cidr, nodePrefix);
  const subnet = await store.leaseNodeSubnet(nodeId, (taken) => lowestFreeSubnet(cidr, nodePrefix, taken));
  if (subnet === null) {
    const count = 2 ** (nodePrefix - parseSubnet(cidr).prefix);
    throw new KilnError('KILN_ERR_CLUSTER_RANGE_FULL', `every /${nodePrefix} of the cluster range ${cidr} is leased to a node (${count}); remove a lost node (its lease goes with it) or give a larger KILN_CLUSTER_CIDR`, { range: cidr, subnets: count });
  }
  return subnet;
}
