// Where a node says its E2B listener is (registered in its node row for the API role).
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { advertisedE2bUrl } from './serve-command.ts';

test('a node advertises its E2B listener; a wildcard listen address takes the host the node advertises', () => {
  assert.equal(advertisedE2bUrl('http://10.0.0.11:3000', 'http://10.0.0.11:18080'), 'http://10.0.0.11:3000');
  assert.equal(advertisedE2bUrl('http://0.0.0.0:3000', 'http://node1.example:18080'), 'http://node1.example:3000');
  assert.equal(advertisedE2bUrl('http://[::]:3000', 'http://[fd00::5]:18080'), 'http://[fd00::5]:3000');
});
