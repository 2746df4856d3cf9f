import assert from 'node:assert/strict';
import { test } from 'node:test';
import { contains, lowestFree, macFor, overlaps, parseSubnet, toDotted, toInt } from './ipv4.ts';

test('subnet: gateway is the first host, VMs get the rest, broadcast excluded', () => {
  const s = parseSubnet('10.118.0.77/24');
  assert.equal(s.network, '10.118.0.0');
  assert.equal(s.gateway, '10.118.0.1');
  assert.equal(toDotted(s.first), '10.118.0.2');
  assert.equal(toDotted(s.last), '10.118.0.254');
  assert.ok(contains(s, '10.118.0.254'));
  assert.ok(!contains(s, '10.118.1.0'));
});

test('subnet: rejects what is not a usable IPv4 CIDR', () => {
  for (const bad of ['10.0.0.0', '10.0.0.0/31', '10.0.0.0/4', '300.0.0.0/24', 'fd00::/64', '10.0.0/24']) {
    assert.throws(() => parseSubnet(bad), { code: 'KILN_ERR_VALIDATION' }, bad);
  }
});

test('lowestFree skips taken addresses and returns null when full', () => {
  const s = parseSubnet('192.168.50.0/29'); // hosts .2 … .6
  assert.equal(lowestFree(s, new Set()), '192.168.50.2');
  assert.equal(lowestFree(s, new Set(['192.168.50.2', '192.168.50.4'])), '192.168.50.3');
  assert.equal(lowestFree(s, new Set(['.2', '.3', '.4', '.5', '.6'].map((x) => `192.168.50${x}`))), null);
});

test('overlaps compares at the shorter prefix', () => {
  assert.ok(overlaps(parseSubnet('10.0.0.0/8'), parseSubnet('10.118.0.0/24')));
  assert.ok(!overlaps(parseSubnet('10.117.0.0/24'), parseSubnet('10.118.0.0/24')));
});

test('macFor is locally administered, unicast and encodes the address', () => {
  assert.equal(macFor('10.118.0.5'), '02:6b:0a:76:00:05');
  assert.equal(toInt('255.255.255.255'), 0xffffffff);
});
