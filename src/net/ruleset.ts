// kiln's whole nftables table, rendered from what the store says should exist. kilnd never
// patches rules in place: it re-renders and swaps the table in one transaction, so a crash,
// restart or concurrent change can only ever leave the previous complete table or the next.
import type { Subnet } from './ipv4.ts';

export type Proto = 'tcp' | 'udp';

export interface PortPublication {
  vmId: string;
  proto: Proto;
  hostPort: number;
  guestIp: string;
  guestPort: number;
}

export interface RulesetInput {
  table: string;
  bridge: string;
  subnet: Subnet;
  publications: readonly PortPublication[];
}

export const NFT_FAMILY = 'ip';

export function tableName(bridge: string): string {
  return `kiln_${bridge.replace(/[^A-Za-z0-9_]/g, '_')}`;
}

export function renderRuleset({ table, bridge, subnet, publications }: RulesetInput): string {
  const cidr = `${subnet.network}/${subnet.prefix}`;
  const br = JSON.stringify(bridge);
  const dnat = [...publications]
    .sort((a, b) => a.proto.localeCompare(b.proto) || a.hostPort - b.hostPort)
    .map((p) => `    fib daddr type local ${p.proto} dport ${p.hostPort} dnat to ${p.guestIp}:${p.guestPort} comment "${p.vmId}"`);
  return [
    // Declare-then-delete makes the load idempotent: it works whether or not the table exists.
    `table ${NFT_FAMILY} ${table} {}`,
    `delete table ${NFT_FAMILY} ${table}`,
    `table ${NFT_FAMILY} ${table} {`,
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
    '  chain forward {',
    '    type filter hook forward priority filter; policy accept;',
    `    iifname ${br} oifname != ${br} accept`,
    `    oifname ${br} ct state established,related accept`,
    `    oifname ${br} ct status dnat accept`,
    // Nothing else from outside reaches a VM: isolation by default.
    `    oifname ${br} drop`,
    '  }',
    '}',
    '',
  ].join('\n');
}
