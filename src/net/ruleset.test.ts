import assert from 'node:assert/strict';
import { test } from 'node:test';
import { parseSubnet } from './ipv4.ts';
import { renderRuleset, tableName } from './ruleset.ts';

const subnet = parseSubnet('10.118.0.0/24');

test('ruleset replaces kiln’s table atomically and masquerades only VM egress', () => {
  const text = renderRuleset({ table: 'kiln_kilnbr0', bridge: 'kilnbr0', subnet, publications: [] });
  const lines = text.split('\n');
  assert.deepEqual(lines.slice(0, 3), ['table ip kiln_kilnbr0 {}', 'delete table ip kiln_kilnbr0', 'table ip kiln_kilnbr0 {']);
  assert.match(text, /ip saddr 10\.118\.0\.0\/24 ip daddr != 10\.118\.0\.0\/24 oifname != "kilnbr0" masquerade/);
  assert.match(text, /oifname "kilnbr0" drop/);
  assert.doesNotMatch(text, /dnat to/);
});

test('each publication becomes a DNAT rule for outside and for host-local traffic, sorted', () => {
  const text = renderRuleset({
    table: 't',
    bridge: 'br',
    subnet,
    publications: [
      { vmId: 'vm-b', proto: 'udp', hostPort: 5353, guestIp: '10.118.0.3', guestPort: 53 },
      { vmId: 'vm-a', proto: 'tcp', hostPort: 8080, guestIp: '10.118.0.2', guestPort: 80 },
    ],
  });
  const rules = text.split('\n').filter((l) => l.includes('dnat to'));
  assert.deepEqual(rules.map((l) => l.trim()), [
    'fib daddr type local tcp dport 8080 dnat to 10.118.0.2:80 comment "vm-a"',
    'fib daddr type local udp dport 5353 dnat to 10.118.0.3:53 comment "vm-b"',
    'fib daddr type local tcp dport 8080 dnat to 10.118.0.2:80 comment "vm-a"',
    'fib daddr type local udp dport 5353 dnat to 10.118.0.3:53 comment "vm-b"',
  ]);
});

test('tableName keeps to nft’s identifier characters', () => {
  assert.equal(tableName('kilnbr0'), 'kiln_kilnbr0');
  assert.equal(tableName('kt-1.a'), 'kiln_kt_1_a');
});
