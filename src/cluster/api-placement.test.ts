import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { KilnError } from '../errors.ts';
import { capacity } from '../store/conformance.ts';
import type { ImageRecord, NodeRecord, SnapshotRecord, Store, TemplateRecord, VolumeRecord } from '../store/store.ts';
import { chooseNode, createNeeds, resolveNeeds } from './api-placement.ts';

const node = (name: string, over: Partial<NodeRecord['capacity']> = {}, state: NodeRecord['state'] = 'ready'): NodeRecord => ({
  id: `node-${name}`, name, url: `http://${name}`, e2bUrl: null, state, incarnation: 1, capacity: capacity({ images: [], ...over }),
  registeredAt: 0, heartbeatAt: 0, lostAt: null,
});
const code = (c: string) => (e: unknown) => (e as KilnError).code === c;

/** The store reads resolveNeeds makes, over fixed rows. */
function fakeStore(rows: { snapshots?: SnapshotRecord[]; volumes?: VolumeRecord[]; templates?: TemplateRecord[]; images?: ImageRecord[] }): Store {
  return {
    getSnapshot: async (id: string) => rows.snapshots?.find((s) => s.id === id) ?? null,
    getVolume: async (id: string) => rows.volumes?.find((v) => v.id === id || v.name === id) ?? null,
    getTemplate: async (id: string) => rows.templates?.find((t) => t.id === id) ?? null,
    listTemplates: async () => rows.templates ?? [],
    getImage: async (id: string) => rows.images?.find((i) => i.id === id || i.name === id) ?? null,
  } as unknown as Store;
}
const snap = (id: string, nodeId: string | null): SnapshotRecord => ({
  id, sourceVmId: null, templateId: null, path: '/s', sizeBytes: 1, createdAt: 1, nodeId,
  meta: { guest: { vcpus: 2, memoryMib: 512, imageId: 'img-app' } } as unknown as SnapshotRecord['meta'],
});
const vol = (name: string, nodeId: string | null): VolumeRecord => ({ id: `vol-${name}`, name, sizeMib: 64, path: '/v', createdAt: 1, nodeId });
const tpl = (id: string, nodeId: string, state: TemplateRecord['state'] = 'ready'): TemplateRecord => ({
  id, imageId: 'img-app', vcpus: 1, memoryMib: 256, key: id, state, stateReason: null, snapshotId: 'snap-t', createdAt: 1, updatedAt: 1, nodeId,
});
const image = { id: 'img-app', name: 'app' } as ImageRecord;
const DEF = { vcpus: 1, memoryMib: 256 };

test('createNeeds reads sizes, image, snapshot, template and named volumes (not host directories) from a create body', () => {
  const n = createNeeds({ vcpus: 2, memory_mib: 512, image: 'app', volumes: [{ volume: 'data', target: '/d' }, { host_path: '/srv', target: '/s' }] }, 'n2');
  assert.deepEqual(n, { vcpus: 2, memoryMib: 512, image: 'app', snapshot: undefined, template: undefined, volumes: ['data'], node: 'n2' });
  assert.deepEqual(createNeeds({}).volumes, []);
});

test('a restore is pinned to its snapshot\'s node at the snapshot\'s size; a lost holder is KILN_ERR_NODE_UNAVAILABLE', async () => {
  const store = fakeStore({ snapshots: [snap('snap-1', 'node-b')] });
  const r = await resolveNeeds(store, createNeeds({ snapshot: 'snap-1', vcpus: 8 }), DEF);
  assert.deepEqual(r.demand, { vcpus: 2, memoryMib: 512, imageId: 'img-app' });
  const nodes = [node('a'), node('b'), node('c')];
  for (let i = 0; i < 10; i++) assert.equal(chooseNode(nodes, r, { k: 3 }).node.name, 'b');
  assert.equal(chooseNode(nodes, r).kind, 'pinned');
  assert.throws(() => chooseNode([node('a'), node('b', {}, 'lost')], r), (e) => code('KILN_ERR_NODE_UNAVAILABLE')(e) && /snapshot snap-1 is on node b, which is lost/.test((e as Error).message));
  assert.throws(() => chooseNode([node('a'), node('b', { committedVcpus: 8 })], r), code('KILN_ERR_CAPACITY'), 'a full holder is not swapped for another node');
  await assert.rejects(resolveNeeds(store, createNeeds({ snapshot: 'nope' }), DEF), code('KILN_ERR_SNAPSHOT_NOT_FOUND'));
});

test('volumes pin the create to their node; volumes (or a snapshot) on two nodes are KILN_ERR_NODE_CONFLICT', async () => {
  const store = fakeStore({ volumes: [vol('data', 'node-a'), vol('logs', 'node-a'), vol('other', 'node-c'), vol('old', null)], snapshots: [snap('snap-1', 'node-b')] });
  const nodes = [node('a'), node('b'), node('c')];
  const both = await resolveNeeds(store, createNeeds({ volumes: [{ volume: 'data', target: '/d' }, { volume: 'vol-logs', target: '/l' }] }), DEF);
  assert.equal(chooseNode(nodes, both).node.name, 'a');
  const split = await resolveNeeds(store, createNeeds({ volumes: [{ volume: 'data', target: '/d' }, { volume: 'other', target: '/o' }] }), DEF);
  assert.throws(() => chooseNode(nodes, split), (e) => {
    const k = e as KilnError;
    return k.code === 'KILN_ERR_NODE_CONFLICT' && k.status === 409 && /volume data on a; volume other on c/.test(k.message);
  });
  const withSnap = await resolveNeeds(store, createNeeds({ snapshot: 'snap-1', volumes: [{ volume: 'data', target: '/d' }] }), DEF);
  assert.throws(() => chooseNode(nodes, withSnap), code('KILN_ERR_NODE_CONFLICT'));
  const pinnedElsewhere = await resolveNeeds(store, createNeeds({ volumes: [{ volume: 'data', target: '/d' }] }, 'c'), DEF);
  assert.throws(() => chooseNode(nodes, pinnedElsewhere), code('KILN_ERR_NODE_CONFLICT'), 'x-kiln-node against the volume\'s node');
  const legacy = await resolveNeeds(store, createNeeds({ volumes: [{ volume: 'old', target: '/d' }] }), DEF);
  assert.equal(chooseNode(nodes, legacy).kind, 'placed', 'a volume row without a node does not pin');
  await assert.rejects(resolveNeeds(store, createNeeds({ volumes: [{ volume: 'gone', target: '/d' }] }), DEF), code('KILN_ERR_VOLUME_NOT_FOUND'));
});

test('x-kiln-node pins a create to a node by name or id; an unknown one is a validation error', async () => {
  const nodes = [node('a'), node('b')];
  const store = fakeStore({});
  assert.equal(chooseNode(nodes, await resolveNeeds(store, createNeeds({}, 'b'), DEF)).node.name, 'b');
  assert.equal(chooseNode(nodes, await resolveNeeds(store, createNeeds({}, 'node-a'), DEF)).node.name, 'a');
  assert.throws(() => chooseNode(nodes, { demand: { vcpus: 1, memoryMib: 1 }, pins: [{ nodeId: 'zz', byName: true, why: 'x' }], prefer: [] }), code('KILN_ERR_VALIDATION'));
});

test('template locality: a clone goes to a node with the ready template when one fits, else anywhere', async () => {
  const store = fakeStore({ templates: [tpl('tpl-1', 'node-c'), tpl('tpl-2', 'node-b', 'failed')], images: [image] });
  const nodes = [node('a'), node('b'), node('c', { committedVcpus: 2 })];
  const byImage = await resolveNeeds(store, createNeeds({ template: 'app' }), DEF);
  assert.deepEqual(byImage.prefer, ['node-c'], 'only the ready template of that size');
  for (let i = 0; i < 10; i++) assert.deepEqual([chooseNode(nodes, byImage, { k: 3 }).node.name, chooseNode(nodes, byImage).kind], ['c', 'template']);
  const byId = await resolveNeeds(store, createNeeds({ template: 'tpl-1' }), DEF);
  assert.equal(chooseNode(nodes, byId).node.name, 'c');
  const full = [node('a'), node('b'), node('c', { committedVcpus: 8 })];
  assert.equal(chooseNode(full, byImage).kind, 'placed', 'a full template node: built again elsewhere');
  const otherSize = await resolveNeeds(store, createNeeds({ template: 'app', memory_mib: 1024 }), DEF);
  assert.deepEqual(otherSize.prefer, [], 'a template of another size is not this one');
  const none = await resolveNeeds(fakeStore({ images: [image] }), createNeeds({ template: 'app' }), DEF);
  assert.equal(chooseNode(nodes, none).kind, 'placed');
});

test('without pins or templates: best of K with image locality, KILN_ERR_CAPACITY when nothing fits', async () => {
  const r = await resolveNeeds(fakeStore({ images: [image] }), createNeeds({ image: 'app', memory_mib: 256 }), DEF);
  assert.equal(r.demand.imageId, 'img-app');
  const nodes = [node('a'), node('b', { images: ['img-app'] })];
  assert.equal(chooseNode(nodes, r, { k: 2 }).node.name, 'b');
  assert.throws(() => chooseNode([node('a', { committedVcpus: 8 })], r), code('KILN_ERR_CAPACITY'));
});
