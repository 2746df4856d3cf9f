// Network for restored clones (Firecracker's network-for-clones recipe, for both backends).
// Every clone of a snapshot holds the same guest address, MAC and gateway in its memory, so
// each runs in its own network namespace that recreates what the guest saw:
//
//   guest eth0 (template ip/mac) ── tap <template's tap name> ─┐  netns kiln-<vm id>
//     route <template ip>/32 dev tap; the tap takes the MAC    │  DNAT <clone ip> → template ip
//     the guest has cached for its gateway; proxy ARP for it   │  SNAT template ip → <clone ip>
//   veth0 <clone ip>/<prefix>, default via the bridge ─────────┘
//        │ veth pair
//   host: kiln<vm id> on kiln's bridge (isolated port, like a tap)
//
// The clone's unique address is leased from kiln's subnet like any VM's, so the host, the
// port publications and the agent (sessions to <clone ip>, pushes arriving SNATed from it)
// treat a clone as a VM at that address. The host-side veth carries tapName(vm id), so the
// network manager's sweep and unplug handle it like a tap; the namespace goes with it.
import fs from 'node:fs/promises';
import * as ip from '../tools/ip.ts';
import { netnsExec } from '../tools/nsenter.ts';
import { macFor } from './ipv4.ts';

export const CLONE_NETNS_PREFIX = 'kiln-';
/** The clone side of the veth pair, inside the namespace. */
export const CLONE_NS_VETH = 'veth0';
const CLONE_NFT_TABLE = 'kiln_clone';

export function cloneNetnsName(vmId: string): string {
  return `${CLONE_NETNS_PREFIX}${vmId}`;
}

export interface CloneNetPlan {
  netns: string;
  bridge: string;
  /** Host end of the veth pair, on the bridge: the VM's usual tap name. */
  hostVeth: string;
  cloneIp: string;
  cloneMac: string;
  prefix: number;
  gateway: string;
  /** What the guest has: its address, and the tap name its VMM opens. */
  guestIp: string;
  tap: string;
  /** The MAC the guest has cached for its gateway (stale entries then still reach the namespace). */
  gatewayMac: string;
  /** The guest's own MAC, when known: the namespace then needs no ARP round trip to reach it. */
  guestMac?: string;
  /** The tap's owner when the VMM opening it is unprivileged (a jailed Firecracker). */
  tapOwner?: ip.TapOwner;
}

export function clonePlan(o: Omit<CloneNetPlan, 'netns' | 'cloneMac'> & { vmId: string }): CloneNetPlan {
  const { vmId, ...rest } = o;
  return { ...rest, netns: cloneNetnsName(vmId), cloneMac: macFor(o.cloneIp) };
}

/**
 * `ip -batch` lines run on the host, the namespace's creation first (iproute2 returns to the
 * host namespace after `netns add` in batch mode, so the veth lines that follow run there).
 */
export function hostCommands(p: CloneNetPlan): string[][] {
  return [
    ['netns', 'add', p.netns],
    ['neigh', 'flush', 'to', p.cloneIp, 'dev', p.bridge],
    ['link', 'add', p.hostVeth, 'type', 'veth', 'peer', 'name', CLONE_NS_VETH, 'netns', p.netns],
    ['link', 'set', 'dev', p.hostVeth, 'master', p.bridge],
    ['link', 'set', 'dev', p.hostVeth, 'type', 'bridge_slave', 'isolated', 'on'],
    ['link', 'set', 'dev', p.hostVeth, 'up'],
  ];
}

/** `ip -n <netns> -batch` lines: the namespace's links, addresses and routes. */
export function namespaceCommands(p: CloneNetPlan): string[][] {
  return [
    ['link', 'set', 'dev', 'lo', 'up'],
    ['link', 'set', 'dev', CLONE_NS_VETH, 'address', p.cloneMac],
    ['addr', 'add', `${p.cloneIp}/${p.prefix}`, 'dev', CLONE_NS_VETH],
    ['link', 'set', 'dev', CLONE_NS_VETH, 'up'],
    ip.tuntapAddCommand(p.tap, p.tapOwner),
    ['link', 'set', 'dev', p.tap, 'address', p.gatewayMac],
    ['link', 'set', 'dev', p.tap, 'up'],
    ['route', 'add', `${p.guestIp}/32`, 'dev', p.tap],
    ['route', 'add', 'default', 'via', p.gateway, 'dev', CLONE_NS_VETH],
    // The guest's address never moves: the first packet to it (the identity op's SYN) need
    // not wait for a guest still warming up after its resume to answer an ARP request.
    ...(p.guestMac ? [['neigh', 'replace', p.guestIp, 'lladdr', p.guestMac, 'dev', p.tap, 'nud', 'permanent']] : []),
  ];
}

/** Forwarding, and proxy ARP on the tap: the guest re-ARPs its gateway after the ARP flush. */
export function namespaceSysctls(p: CloneNetPlan): string[] {
  return [
    'net.ipv4.ip_forward=1',
    `net.ipv4.conf.${p.tap}.proxy_arp=1`,
    // Proxy ARP replies are otherwise delayed at random up to 0.8 s (proxy_delay, 80 jiffies):
    // the guest re-ARPs its gateway right after the identity op's flush, on the restore path.
    `net.ipv4.neigh.${p.tap}.proxy_delay=0`,
    'net.ipv4.conf.all.rp_filter=0',
    `net.ipv4.conf.${p.tap}.rp_filter=0`,
    `net.ipv4.conf.${CLONE_NS_VETH}.rp_filter=0`,
  ];
}

/** The namespace's own nftables table: the clone address ⇄ the guest address. */
export function namespaceRuleset(p: CloneNetPlan): string {
  return [
    `table ip ${CLONE_NFT_TABLE} {`,
    '  chain prerouting {',
    '    type nat hook prerouting priority dstnat; policy accept;',
    `    iifname "${CLONE_NS_VETH}" ip daddr ${p.cloneIp} dnat to ${p.guestIp}`,
    '  }',
    '  chain postrouting {',
    '    type nat hook postrouting priority srcnat; policy accept;',
    `    oifname "${CLONE_NS_VETH}" ip saddr ${p.guestIp} snat to ${p.cloneIp}`,
    '  }',
    '}',
    '',
  ].join('\n');
}

/**
 * Builds the namespace; on failure removes whatever part of it exists. Three processes on the
 * critical path (host batch → namespace batch → sysctls); the ruleset, which names its links
 * only as strings, loads alongside the namespace batch.
 */
export async function createCloneNetwork(p: CloneNetPlan): Promise<void> {
  try {
    await ip.ipBatch(hostCommands(p));
    const results = await Promise.allSettled([
      ip.ipBatchIn(p.netns, namespaceCommands(p)).then(() => netnsExec(p.netns, 'sysctl', ['-q', '-w', ...namespaceSysctls(p)])),
      netnsExec(p.netns, 'nft', ['-f', '-'], namespaceRuleset(p)),
    ]);
    for (const r of results) if (r.status === 'rejected') throw r.reason;
  } catch (e) {
    await removeCloneNetwork(p.netns, p.hostVeth).catch(() => {});
    throw e;
  }
}

export async function netnsExists(name: string): Promise<boolean> {
  return fs.access(`/run/netns/${name}`).then(() => true, () => false);
}

/** Deleting the namespace takes its tap, its veth end (and so the host end) and its table. */
export async function removeCloneNetwork(netns: string, hostVeth: string): Promise<void> {
  if (await netnsExists(netns)) await ip.deleteNetns(netns);
  if (await ip.linkExists(hostVeth)) await ip.deleteLink(hostVeth);
}

/** Clone namespaces of VMs not in `keep` (start-up sweep). */
export async function strayCloneNamespaces(keep: ReadonlySet<string>): Promise<string[]> {
  const names = await ip.listNetns().catch(() => [] as string[]);
  return names.filter((n) => n.startsWith(CLONE_NETNS_PREFIX) && !keep.has(n));
}
