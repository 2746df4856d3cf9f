// kiln's nftables tables, rendered from what the store says should exist. kilnd never
// patches rules in place: it re-renders and swaps the tables in one transaction, so a crash,
// restart or concurrent change can only ever leave the previous complete set or the next.
//
// Two tables, both named `kiln_<bridge>`:
//   inet   — published ports (DNAT), egress NAT, what guests may reach on the host (input),
//            where guests may go beyond it (per-VM egress), and the CVE-2020-8558 guard:
//            127.0.0.0/8 arriving from the bridge is dropped before routing. route_localnet
//            stays on for the bridge only because the host's own 127.0.0.1 → published-port
//            connections are rerouted onto it with their loopback source (then masqueraded).
//   bridge — anti-spoofing per port: a guest's frames carry its own MAC, and its IPv4 and ARP
//            its own lease; anything else (IPv6, VLAN tags, other ethertypes) is dropped.
// A clone's host-side veth is a port like a tap and holds the clone's leased address/MAC
// (its namespace SNATs the guest to it), so the same rules cover clones.
import { NON_PUBLIC_V4, type EgressPolicy } from './egress.ts';
import type { Subnet } from './ipv4.ts';

export type Proto = 'tcp' | 'udp';

export interface PortPublication {
  vmId: string;
  proto: Proto;
  hostPort: number;
  guestIp: string;
  guestPort: number;
}

/** One VM's port on the bridge (a tap, or a clone's veth): what it may send and where to. */
export interface GuestPort {
  vmId: string;
  ifname: string;
  mac: string;
  ip: string;
  egress: EgressPolicy;
}

export interface RulesetInput {
  table: string;
  bridge: string;
  subnet: Subnet;
  publications: readonly PortPublication[];
  guests: readonly GuestPort[];
  /** The agent's push listener on the gateway (the only host port guests reach); null: none. */
  agentPort: number | null;
  /** The host's own IPv4 networks (CIDRs) on other links: never reachable by default egress. */
  hostNetworks: readonly string[];
}

export const NFT_FAMILY = 'inet';
export const NFT_BRIDGE_FAMILY = 'bridge';
/** Before the isolation work kiln's table was `ip`: a render removes it if an older kilnd left it. */
const LEGACY_FAMILY = 'ip';

export function tableName(bridge: string): string {
  return `kiln_${bridge.replace(/[^A-Za-z0-9_]/g, '_')}`;
}

/** Every table kiln keeps for this bridge, as [family, name] (teardown, test cleanup). */
export function tablesFor(bridge: string): [string, string][] {
  const t = tableName(bridge);
  return [[NFT_FAMILY, t], [NFT_BRIDGE_FAMILY, t], [LEGACY_FAMILY, t]];
}

function egressChainName(vmId: string): string {
  return `egress_${vmId.replace(/[^A-Za-z0-9_]/g, '_')}`;
}

const elements = (items: readonly string[]) => (items.length ? [`    elements = { ${items.join(', ')} }`] : []);

export function renderRuleset(input: RulesetInput): string {
  const { table, bridge, subnet, publications, guests, agentPort, hostNetworks } = input;
  const cidr = `${subnet.network}/${subnet.prefix}`;
  const br = JSON.stringify(bridge);
  const dnat = [...publications]
    .sort((a, b) => a.proto.localeCompare(b.proto) || a.hostPort - b.hostPort)
    .map((p) => `    fib daddr type local ${p.proto} dport ${p.hostPort} dnat ip to ${p.guestIp}:${p.guestPort} comment "${p.vmId}"`);
  const sorted = [...guests].sort((a, b) => a.ip.localeCompare(b.ip));
  // Egress verdict per source: the default policy shares one chain, custom ones get their own.
  const custom = sorted.filter((g) => g.egress.allow.length > 0);
  const verdict = (g: GuestPort) =>
    g.egress.allow.length ? `jump ${egressChainName(g.vmId)}` : g.egress.internet ? 'jump egress_internet' : 'drop';
  const vmap = sorted.map((g) => `${g.ip} : ${verdict(g)}`);
  const nonPublic = [...NON_PUBLIC_V4, cidr, ...hostNetworks];
  const fresh = (family: string) => [`table ${family} ${table} {}`, `delete table ${family} ${table}`];
  return [
    // Declare-then-delete makes the load idempotent: it works whether or not the table exists.
    ...fresh(LEGACY_FAMILY),
    ...fresh(NFT_FAMILY),
    `table ${NFT_FAMILY} ${table} {`,
    '  set non_public {',
    '    type ipv4_addr; flags interval; auto-merge;',
    ...elements(nonPublic),
    '  }',
    // Before conntrack and NAT: no guest packet to or from loopback addresses is ever routed
    // (with route_localnet on, the kernel would otherwise deliver 127.0.0.1 from the bridge).
    // No IPv6 from guests at all (the bridge table drops it at layer 2 already).
    '  chain guard {',
    '    type filter hook prerouting priority raw; policy accept;',
    `    iifname ${br} ip daddr 127.0.0.0/8 counter drop`,
    `    iifname ${br} ip saddr 127.0.0.0/8 counter drop`,
    `    iifname ${br} meta nfproto ipv6 counter drop`,
    '  }',
    // Published ports, for traffic arriving from outside the host …
    '  chain prerouting {',
    '    type nat hook prerouting priority dstnat; policy accept;',
    ...dnat,
    '  }',
    // … and for connections the host makes itself, 127.0.0.1 included.
    '  chain output {',
    '    type nat hook output priority -100; policy accept;',
    ...dnat,
    '  }',
    '  chain postrouting {',
    '    type nat hook postrouting priority srcnat; policy accept;',
    // Egress: VMs reach the outside world as the host.
    `    ip saddr ${cidr} ip daddr != ${cidr} oifname != ${br} masquerade`,
    // Loopback-sourced DNAT traffic needs a real source address on the bridge to get replies.
    `    ip saddr 127.0.0.0/8 oifname ${br} masquerade`,
    '  }',
    // What a guest reaches on the host itself (gateway or any other host address): replies to
    // the host's own connections, and the agent's push listener. Nothing else.
    '  chain input {',
    '    type filter hook input priority filter; policy accept;',
    `    iifname ${br} jump from_guest`,
    '  }',
    '  chain from_guest {',
    '    ct state established,related accept',
    ...(agentPort ? [`    ip daddr ${subnet.gateway} tcp dport ${agentPort} ct state new accept`] : []),
    '    counter drop',
    '  }',
    '  chain forward {',
    '    type filter hook forward priority filter; policy accept;',
    `    oifname ${br} ct state established,related accept`,
    `    oifname ${br} ct status dnat accept`,
    `    iifname ${br} jump egress`,
    // Nothing else from outside reaches a VM (nor one VM another through the host).
    `    oifname ${br} drop`,
    '  }',
    '  chain egress {',
    '    ct state established,related accept',
    ...(vmap.length ? [`    ip saddr vmap { ${vmap.join(', ')} }`] : []),
    // A source that is no VM's lease (the bridge table should have stopped it already).
    '    counter drop',
    '  }',
    '  chain egress_internet {',
    '    ip daddr @non_public drop',
    '    accept',
    '  }',
    ...custom.flatMap((g) => [
      `  chain ${egressChainName(g.vmId)} {`,
      `    ip daddr { ${g.egress.allow.join(', ')} } accept`,
      ...(g.egress.internet ? ['    ip daddr @non_public drop', '    accept'] : ['    drop']),
      '  }',
    ]),
    '}',
    ...fresh(NFT_BRIDGE_FAMILY),
    `table ${NFT_BRIDGE_FAMILY} ${table} {`,
    '  set ports {',
    '    type ifname;',
    ...elements(sorted.map((g) => JSON.stringify(g.ifname))),
    '  }',
    '  set ip_src {',
    '    type ifname . ether_addr . ipv4_addr;',
    ...elements(sorted.map((g) => `${JSON.stringify(g.ifname)} . ${g.mac} . ${g.ip}`)),
    '  }',
    '  set arp_src {',
    '    type ifname . ether_addr . ether_addr . ipv4_addr;',
    ...elements(sorted.map((g) => `${JSON.stringify(g.ifname)} . ${g.mac} . ${g.mac} . ${g.ip}`)),
    '  }',
    // Frames entering the bridge from a VM's port: its own MAC, and its own IPv4 in IP and ARP.
    // (Ports are named per VM id, so another kilnd's bridge on this host is never matched.)
    '  chain prerouting {',
    '    type filter hook prerouting priority filter; policy accept;',
    '    iifname != @ports accept',
    '    ether type ip iifname . ether saddr . ip saddr @ip_src accept',
    '    ether type arp arp htype 1 arp ptype ip arp hlen 6 arp plen 4 iifname . ether saddr . arp saddr ether . arp saddr ip @arp_src accept',
    '    counter drop',
    '  }',
    '}',
    '',
  ].join('\n');
}
