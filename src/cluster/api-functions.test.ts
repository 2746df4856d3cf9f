import assert from 'node:assert/strict';
import { test } from 'node:test';
import { capacity } from '../store/conformance.ts';
import type { NodeRecord } from '../store/store.ts';
import { invokeOrder } from './api-functions.ts';

const node = (name: string, functions?: Record<string, number>): NodeRecord => ({
  id: `node-${name}`, name, url: `http://${name}`, e2bUrl: null, state: 'ready', incarnation: 1, capacity: { ...capacity({ images: [] }), ...(functions ? { functions } : {}) },
  registeredAt: 0, heartbeatAt: 0, lostAt: null,
});

test('invokes go to nodes with a ready instance first, then to the others that serve the function, never to one that does not', () => {
  const nodes = [node('a', { f: 0 }), node('b', { f: 2, g: 0 }), node('c', { g: 1 })];
  assert.deepEqual(invokeOrder(nodes, 'f').map((n) => n.name), ['b', 'a']);
  assert.deepEqual(invokeOrder(nodes, 'g').map((n) => n.name), ['c', 'b']);
});

test('a function no node has reported yet (deployed since the last heartbeat) may go to any ready node, in the given order', () => {
  const nodes = [node('a', {}), node('b'), node('c', { g: 1 })];
  assert.deepEqual(invokeOrder(nodes, 'new').map((n) => n.name), ['a', 'b', 'c']);
});
