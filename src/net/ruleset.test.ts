import assert from 'node:assert/strict';
import { test } from 'node:test';
import { parseSubnet } from './ipv4.ts';
import { renderRuleset, tableName, type GuestPort, type RulesetInput } from './ruleset.ts';

const subnet = parseSubnet('10.118.0.0/24');
const base: RulesetInput = { table: 'kiln_kilnbr0', bridge: 'kilnbr0', subnet, publications: [], guests: [], agentPort: 18081, hostNetworks: [] };
const guest = (n: number, egress: GuestPort['egress']): GuestPort => ({ vmId: `vm-${n}`, ifname: `kiln${n}`, mac: `02:6b:0a:76:00:0${n}`, ip: `10.118.0.${n}`, egress });
/** The lines of one chain's body, trimmed. */
const chain = (text: string, name: string) => {
  const lines = text.split('\n');
  const start = lines.findIndex((l) => l.trim() === `chain ${name} {`);
  assert.notEqual(start, -1, `chain ${name} rendered`);
  const end = lines.findIndex((l, i) => i > start && l.trim() === '}');
  return lines.slice(start + 1, end).map((l) => l.trim());
};

test('the tables are replaced atomically: the legacy ip table, then inet and bridge', () => {
  const lines = renderRuleset(base).split('\n');
  assert.deepEqual(lines.slice(0, 5), ['table ip kiln_kilnbr0 {}', 'delete table ip kiln_kilnbr0', 'table inet kiln_kilnbr0 {}', 'delete table inet kiln_kilnbr0', 'table inet kiln_kilnbr0 {']);
  assert.ok(lines.includes('delete table bridge kiln_kilnbr0'));
});

test('loopback from the bridge is dropped before routing; guests reach only the agent port on the host', () => {
  const text = renderRuleset(base);
  assert.deepEqual(chain(text, 'guard').slice(1), [
    'iifname "kilnbr0" ip daddr 127.0.0.0/8 counter drop',
    'iifname "kilnbr0" ip saddr 127.0.0.0/8 counter drop',
    'iifname "kilnbr0" meta nfproto ipv6 counter drop',
  ]);
  assert.deepEqual(chain(text, 'from_guest'), ['ct state established,related accept', 'ip daddr 10.118.0.1 tcp dport 18081 ct state new accept', 'counter drop']);
  assert.deepEqual(chain(renderRuleset({ ...base, agentPort: null }), 'from_guest'), ['ct state established,related accept', 'counter drop']);
  assert.match(text, /ip saddr 10\.118\.0\.0\/24 ip daddr != 10\.118\.0\.0\/24 oifname != "kilnbr0" masquerade/);
});

test('each publication becomes a DNAT rule for outside and for host-local traffic, sorted', () => {
  const text = renderRuleset({
    ...base,
    publications: [
      { vmId: 'vm-b', proto: 'udp', hostPort: 5353, guestIp: '10.118.0.3', guestPort: 53 },
      { vmId: 'vm-a', proto: 'tcp', hostPort: 8080, guestIp: '10.118.0.2', guestPort: 80 },
    ],
  });
  const expected = ['fib daddr type local tcp dport 8080 dnat ip to 10.118.0.2:80 comment "vm-a"', 'fib daddr type local udp dport 5353 dnat ip to 10.118.0.3:53 comment "vm-b"'];
  assert.deepEqual(chain(text, 'prerouting').slice(1), expected);
  assert.deepEqual(chain(text, 'output').slice(1), expected);
});

test('egress: default internet shares a chain, none drops, allow-lists get their own chain', () => {
  const text = renderRuleset({
    ...base,
    hostNetworks: ['203.0.113.0/24'],
    guests: [guest(2, { internet: true, allow: [] }), guest(3, { internet: false, allow: [] }), guest(4, { internet: false, allow: ['10.9.0.0/16'] }), guest(5, { internet: true, allow: ['192.168.1.0/24'] })],
  });
  assert.deepEqual(chain(text, 'egress'), [
    'ct state established,related accept',
    'ip saddr vmap { 10.118.0.2 : jump egress_internet, 10.118.0.3 : drop, 10.118.0.4 : jump egress_vm_4, 10.118.0.5 : jump egress_vm_5 }',
    'counter drop',
  ]);
  assert.deepEqual(chain(text, 'egress_internet'), ['ip daddr @non_public drop', 'accept']);
  assert.deepEqual(chain(text, 'egress_vm_4'), ['ip daddr { 10.9.0.0/16 } accept', 'drop']);
  assert.deepEqual(chain(text, 'egress_vm_5'), ['ip daddr { 192.168.1.0/24 } accept', 'ip daddr @non_public drop', 'accept']);
  const set = text.split('\n').find((l) => l.includes('elements') && l.includes('169.254.0.0/16'))!;
  for (const r of ['10.0.0.0/8', '100.64.0.0/10', '172.16.0.0/12', '192.168.0.0/16', '10.118.0.0/24', '203.0.113.0/24']) assert.ok(set.includes(r), `${r} is non-public`);
});

test('anti-spoofing: each port may send only its own MAC and IPv4, in IP and ARP', () => {
  const text = renderRuleset({ ...base, guests: [guest(2, { internet: true, allow: [] })] });
  assert.match(text, /set ports \{\n {4}type ifname;\n {4}elements = \{ "kiln2" \}/);
  assert.match(text, /elements = \{ "kiln2" \. 02:6b:0a:76:00:02 \. 10\.118\.0\.2 \}/);
  assert.match(text, /elements = \{ "kiln2" \. 02:6b:0a:76:00:02 \. 02:6b:0a:76:00:02 \. 10\.118\.0\.2 \}/);
  assert.deepEqual(chain(text, 'prerouting').length > 0, true);
  const l2 = text.slice(text.indexOf('table bridge kiln_kilnbr0 {'));
  assert.deepEqual(chain(l2, 'prerouting').slice(1), [
    'iifname != @ports accept',
    'ether type ip iifname . ether saddr . ip saddr @ip_src accept',
    'ether type arp arp htype 1 arp ptype ip arp hlen 6 arp plen 4 iifname . ether saddr . arp saddr ether . arp saddr ip @arp_src accept',
    'counter drop',
  ]);
});

test('tableName keeps to nft’s identifier characters', () => {
  assert.equal(tableName('kilnbr0'), 'kiln_kilnbr0');
  assert.equal(tableName('kt-1.a'), 'kiln_kt_1_a');
});
