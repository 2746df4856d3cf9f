import assert from 'node:assert/strict';
import { test } from 'node:test';
import { capacity } from '../store/conformance.ts';
import type { NodeRecord } from '../store/store.ts';
import { mergeLists } from './api-merge.ts';
import { mergeGc } from './api-storage.ts';

const node = (name: string): NodeRecord => ({
  id: `node-${name}`, name, url: `http://${name}`, e2bUrl: null, state: 'ready', incarnation: 1, capacity: capacity(), registeredAt: 0, heartbeatAt: 0, lostAt: null,
});
const [a, b] = [node('a'), node('b')];

test('shared rows listed by every node: one entry each, the holder\'s view, tagged with the holder', () => {
  const lists = [
    { node: a, items: [{ id: 'vol-1', allocated_bytes: 0, created_at: '2' }, { id: 'vol-2', allocated_bytes: 7, created_at: '1' }] },
    { node: b, items: [{ id: 'vol-1', allocated_bytes: 5, created_at: '2' }, { id: 'vol-2', allocated_bytes: 0, created_at: '1' }, { id: 'vol-3', created_at: '3' }] },
  ];
  const holder = new Map<string, string | null>([['vol-1', 'node-b'], ['vol-2', 'node-a'], ['vol-3', null]]);
  assert.deepEqual(mergeLists(lists, (id) => holder.get(id), new Map([['node-a', 'a'], ['node-b', 'b']])), [
    { id: 'vol-2', allocated_bytes: 7, created_at: '1', node: 'a' },
    { id: 'vol-1', allocated_bytes: 5, created_at: '2', node: 'b' },
    { id: 'vol-3', created_at: '3', node: null },
  ]);
  const lost = mergeLists([lists[0]!], (id) => holder.get(id), new Map([['node-b', 'b']]));
  assert.equal(lost.find((x) => x.id === 'vol-1')?.node, 'b', 'a holder that did not answer is still named');
});

test('per-node rows (containers): each tagged with the node that listed it', () => {
  assert.deepEqual(mergeLists([{ node: a, items: [{ id: 'c1', created_at: '2' }] }, { node: b, items: [{ id: 'c2', created_at: '1' }] }]), [
    { id: 'c2', created_at: '1', node: 'b' },
    { id: 'c1', created_at: '2', node: 'a' },
  ]);
});

test('gc on every node: summed, each node\'s answer kept, a failed node reported without failing the rest', () => {
  const ok = (img: string[], files: number) => ({ removed_images: img, removed_files: files, removed_blobs: 1, freed_bytes: 100, skipped_in_flight: false });
  const r = mergeGc([
    { node: 'a', status: 200, body: ok(['img-1'], 2) },
    { node: 'b', status: 200, body: { ...ok(['img-1', 'img-2'], 3), skipped_in_flight: true } },
    { node: 'c', status: 500, body: { error: { code: 'KILN_ERR_INTERNAL', message: 'x' } } },
  ]);
  assert.deepEqual({ ...r, nodes: undefined }, { removed_images: ['img-1', 'img-2'], removed_files: 5, removed_blobs: 2, freed_bytes: 200, skipped_in_flight: true, nodes: undefined });
  assert.deepEqual((r.nodes as { node: string; status: number }[]).map((n) => [n.node, n.status]), [['a', 200], ['b', 200], ['c', 500]]);
  assert.deepEqual((r.nodes as { error?: unknown }[])[2]!.error, { code: 'KILN_ERR_INTERNAL', message: 'x' });
});
