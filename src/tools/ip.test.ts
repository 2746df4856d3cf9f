import assert from 'node:assert/strict';
import { test } from 'node:test';
import { parseNeighbourLine } from './ip.ts';

test('parseNeighbourLine reads `ip monitor neigh` lines and skips deletions', () => {
  assert.deepEqual(parseNeighbourLine('10.251.7.9 lladdr 02:6b:0a:fb:07:09 REACHABLE '), { ip: '10.251.7.9', mac: '02:6b:0a:fb:07:09', state: 'REACHABLE' });
  assert.deepEqual(parseNeighbourLine('10.0.0.2 dev kilnbr0 lladdr 02:6b:0a:00:00:02 router STALE'), { ip: '10.0.0.2', mac: '02:6b:0a:00:00:02', state: 'STALE' });
  assert.deepEqual(parseNeighbourLine('10.251.7.9 FAILED'), { ip: '10.251.7.9', mac: null, state: 'FAILED' });
  assert.equal(parseNeighbourLine('Deleted 10.251.7.9 FAILED'), null);
  assert.equal(parseNeighbourLine('garbage'), null);
});
