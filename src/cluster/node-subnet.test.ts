import assert from 'node:assert/strict';
import { test } from 'node:test';
import { defaultConfig } from '../config.ts';
import type { KilnError } from '../errors.ts';
import { DEFAULT_CLUSTER_CIDR, clusterRange, lowestFreeSubnet } from './node-subnet.ts';

const code = (c: string) => (e: KilnError) => e.code === c;

test('the cluster range splits into node subnets, lowest free first', () => {
  assert.equal(lowestFreeSubnet(DEFAULT_CLUSTER_CIDR, 24, new Set()), '10.118.0.0/24');
  assert.equal(lowestFreeSubnet(DEFAULT_CLUSTER_CIDR, 24, new Set(['10.118.0.0/24', '10.118.2.0/24'])), '10.118.1.0/24');
  assert.equal(lowestFreeSubnet('10.9.8.7/24', 25, new Set(['10.9.8.0/25'])), '10.9.8.128/25', 'the range is normalised to its network');
  assert.equal(lowestFreeSubnet('10.9.8.0/24', 24, new Set(['10.9.8.0/24'])), null, 'one subnet, taken: full');
  const all = new Set(Array.from({ length: 256 }, (_, i) => `10.118.${i}.0/24`));
  assert.equal(lowestFreeSubnet(DEFAULT_CLUSTER_CIDR, 24, all), null);
});

test('a node prefix outside the range, or not a subnet kiln can use, is refused', () => {
  assert.throws(() => clusterRange('10.118.0.0/16', 12), code('KILN_ERR_VALIDATION'));
  assert.throws(() => clusterRange('10.118.0.0/16', 30), code('KILN_ERR_VALIDATION'));
  assert.throws(() => clusterRange('10.118.0.0', 24), code('KILN_ERR_VALIDATION'));
  assert.deepEqual(clusterRange('10.118.0.0/16', 24), { network: (10 * 256 + 118) * 65536, prefix: 16, nodePrefix: 24 });
});

test('config: KILN_CLUSTER_CIDR and the node prefix; KILN_CIDR counts as given only when set and not empty', () => {
  const d = defaultConfig({});
  assert.equal(d.cluster.cidr, '10.118.0.0/16');
  assert.equal(d.cluster.nodeSubnetPrefix, 24);
  assert.equal(d.network.cidr, '10.118.0.0/24', 'the single-host default is unchanged');
  assert.equal(d.network.cidrGiven, false);
  const c = defaultConfig({ KILN_CLUSTER_CIDR: '10.50.0.0/20', KILN_NODE_SUBNET_PREFIX: '26', KILN_CIDR: '10.60.0.0/24' });
  assert.equal(c.cluster.cidr, '10.50.0.0/20');
  assert.equal(c.cluster.nodeSubnetPrefix, 26);
  assert.equal(c.network.cidr, '10.60.0.0/24');
  assert.equal(c.network.cidrGiven, true);
  assert.equal(defaultConfig({ KILN_CIDR: '' }).network.cidrGiven, false);
});
