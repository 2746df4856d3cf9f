// The API role's routing, on a real ApiRole over a SQLite store with fake nodes (HTTP servers
// that record what reaches them): which node each request goes to, what body it carries, that
// streams pass as they come, what the API answers. No VM, no kilnd: test/cluster-routes.test.ts
// proves the same routes against real nodes.
import assert from 'node:assert/strict';
import fs from 'node:fs/promises';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import pino from 'pino';
import { capacity, image, vm } from '../store/conformance.ts';
import { SqliteStore } from '../store/sqlite-store.ts';
import type { SnapshotRecord } from '../store/store.ts';
import { until } from '../../test/helpers/until.ts';
import { ApiRole } from './api-role.ts';

interface Seen { method: string; url: string; type: string | undefined; body: string; raw: Buffer }
type Handler = (req: http.IncomingMessage, res: http.ServerResponse, body: string) => void;

class FakeNode {
  readonly seen: Seen[] = [];
  handler: Handler = (_req, res) => res.writeHead(200, { 'content-type': 'application/json' }).end('{}');
  private constructor(readonly server: http.Server, readonly url: string) {}
  static async start(): Promise<FakeNode> {
    const server = http.createServer();
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    const node = new FakeNode(server, `http://127.0.0.1:${(server.address() as { port: number }).port}`);
    server.on('request', (req, res) => {
      const chunks: Buffer[] = [];
      req.on('data', (c: Buffer) => chunks.push(c));
      req.on('end', () => {
        const raw = Buffer.concat(chunks);
        const body = raw.toString();
        node.seen.push({ method: req.method!, url: req.url!, type: req.headers['content-type'], body, raw });
        node.handler(req, res, body);
      });
    });
    return node;
  }
}

const TOKEN = 't0ken-for-the-api-role-test';
let dir: string;
let store: SqliteStore;
let api: ApiRole;
let a: FakeNode;
let b: FakeNode;
const call = (method: string, p: string, body?: string | Uint8Array<ArrayBuffer>, type = 'application/json') =>
  fetch(`${api.url}${p}`, { method, headers: { authorization: `Bearer ${TOKEN}`, ...(body === undefined ? {} : { 'content-type': type }) }, body });
const json = (res: http.ServerResponse, status: number, body: unknown) => res.writeHead(status, { 'content-type': 'application/json' }).end(JSON.stringify(body));
const reset = () => {
  a.seen.length = 0;
  b.seen.length = 0;
};

before(async () => {
  dir = await fs.mkdtemp(path.join(os.tmpdir(), 'kiln-api-routes-'));
  store = new SqliteStore(path.join(dir, 'state.db'));
  [a, b] = await Promise.all([FakeNode.start(), FakeNode.start()]);
  // b has the more free disk; a the more free memory.
  await store.registerNode({ id: 'node-a', name: 'a', url: a.url, capacity: capacity({ diskFreeBytes: 1e9 }) }, Date.now());
  await store.registerNode({ id: 'node-b', name: 'b', url: b.url, capacity: capacity({ diskFreeBytes: 5e9, committedMemoryMib: 4096 }) }, Date.now());
  api = await ApiRole.start({ store, token: TOKEN, listenHost: '127.0.0.1', listenPort: 0, log: pino({ level: 'silent' }), portSyncMs: 60_000 });
});

after(async () => {
  await api?.close();
  a?.server.close();
  b?.server.close();
  store?.close();
  await fs.rm(dir, { recursive: true, force: true });
});

test('a volume is made on the node named in the body (the hint not sent on), else on the most free disk; got and deleted on its node', async () => {
  reset();
  b.handler = (_q, res) => json(res, 201, { id: 'vol-1' });
  a.handler = (_q, res) => json(res, 201, { id: 'vol-2' });
  const r = await call('POST', '/v1/volumes', JSON.stringify({ name: 'data', size_mib: 64, node: 'a' }));
  assert.equal(r.status, 201);
  assert.equal(r.headers.get('x-kiln-node'), 'a');
  assert.deepEqual(a.seen.map((s) => [s.method, s.url, JSON.parse(s.body)]), [['POST', '/v1/volumes', { name: 'data', size_mib: 64 }]]);
  const free = await call('POST', '/v1/volumes', JSON.stringify({ name: 'more', size_mib: 64 }));
  assert.equal(free.headers.get('x-kiln-node'), 'b', 'the most free disk');
  assert.equal((await (await call('POST', '/v1/volumes', JSON.stringify({ name: 'x', size_mib: 64, node: 'zz' }))).json()).code, 'KILN_ERR_VALIDATION');

  await store.insertVolume({ id: 'vol-a', name: 'on-a', sizeMib: 64, path: '/a', createdAt: 1, nodeId: 'node-a' });
  reset();
  a.handler = (_q, res) => res.writeHead(204).end();
  assert.equal((await call('DELETE', '/v1/volumes/on-a')).status, 204);
  assert.deepEqual(a.seen.map((s) => [s.method, s.url]), [['DELETE', '/v1/volumes/on-a']]);
  assert.deepEqual(b.seen, []);
  const missing = await call('GET', '/v1/volumes/none');
  assert.deepEqual([missing.status, (await missing.json()).code], [404, 'KILN_ERR_VOLUME_NOT_FOUND']);
});

test('a restore goes to its snapshot\'s node; a lost holder is 503 KILN_ERR_NODE_UNAVAILABLE and nothing is sent', async () => {
  const snap = (id: string, nodeId: string): SnapshotRecord => ({
    id, sourceVmId: null, templateId: null, path: '/s', sizeBytes: 1, createdAt: 1, nodeId,
    meta: { guest: { vcpus: 1, memoryMib: 256, imageId: 'img-1' } } as unknown as SnapshotRecord['meta'],
  });
  await store.insertSnapshot(snap('snap-b', 'node-b'));
  reset();
  b.handler = (_q, res) => json(res, 201, { id: 'vm-1' });
  for (let i = 0; i < 4; i++) {
    const r = await call('POST', '/v1/vms', JSON.stringify({ snapshot: 'snap-b' }));
    assert.equal(r.headers.get('x-kiln-node'), 'b');
  }
  assert.equal(a.seen.length, 0, 'a has the more free memory, but not the snapshot');
  await store.registerNode({ id: 'node-c', name: 'c', url: 'http://127.0.0.1:9', capacity: capacity() }, Date.now());
  await store.insertSnapshot(snap('snap-c', 'node-c'));
  await store.markNodesLost(Date.now() + 1, Date.now() + 2);
  const lost = await call('POST', '/v1/vms', JSON.stringify({ snapshot: 'snap-c' }));
  assert.equal(lost.status, 503);
  const body = await lost.json();
  assert.equal(body.code, 'KILN_ERR_NODE_UNAVAILABLE');
  assert.match(body.message, /snapshot snap-c is on node c, which is lost/);
  // The sweep took every silent node: bring a and b back for the tests after this one.
  for (const n of [{ id: 'node-a', name: 'a', url: a.url, disk: 1e9, mem: 0 }, { id: 'node-b', name: 'b', url: b.url, disk: 5e9, mem: 4096 }]) {
    await store.registerNode({ id: n.id, name: n.name, url: n.url, capacity: capacity({ diskFreeBytes: n.disk, committedMemoryMib: n.mem }) }, Date.now());
  }
});

test('an image delete goes to every ready node in turn, a gc to each; both say what each node did', async () => {
  reset();
  a.handler = (_q, res) => res.writeHead(204).end();
  b.handler = (_q, res) => json(res, 404, { code: 'KILN_ERR_IMAGE_NOT_FOUND', message: 'no image' });
  const r = await call('DELETE', '/v1/images/img-9');
  assert.equal(r.status, 204);
  assert.equal(r.headers.get('x-kiln-node-results'), 'a=204, b=404');
  assert.deepEqual([...a.seen, ...b.seen].map((s) => [s.method, s.url]), [['DELETE', '/v1/images/img-9'], ['DELETE', '/v1/images/img-9']]);

  a.handler = (_q, res) => json(res, 409, { code: 'KILN_ERR_IMAGE_IN_USE', message: 'used by 1 VM(s)' });
  const refused = await call('DELETE', '/v1/images/img-9');
  assert.deepEqual([refused.status, (await refused.json()).code], [409, 'KILN_ERR_IMAGE_IN_USE']);

  a.handler = (_q, res) => json(res, 200, { removed_images: ['x'], removed_files: 1, removed_blobs: 0, freed_bytes: 10, skipped_in_flight: false });
  b.handler = (_q, res) => json(res, 200, { removed_images: [], removed_files: 2, removed_blobs: 3, freed_bytes: 20, skipped_in_flight: false });
  const gc = await (await call('POST', '/v1/images/gc', JSON.stringify({ images: true }))).json();
  assert.deepEqual([gc.removed_images, gc.removed_files, gc.removed_blobs, gc.freed_bytes], [['x'], 3, 3, 30]);
  assert.deepEqual(gc.nodes.map((n: { node: string }) => n.node), ['a', 'b']);
  assert.deepEqual(JSON.parse(b.seen.at(-1)!.body), { images: true });
});

test('an upload is streamed to the node with the most free disk, bytes and content type intact', async () => {
  reset();
  b.handler = (_q, res) => json(res, 201, { id: 'img-up' });
  const bytes = new Uint8Array(new ArrayBuffer(300_000)).map((_, i) => i % 251);
  const r = await call('POST', '/v1/images/upload?name=up', bytes, 'application/x-tar');
  assert.equal(r.status, 201);
  assert.equal(r.headers.get('x-kiln-node'), 'b');
  assert.equal(b.seen[0]!.url, '/v1/images/upload?name=up');
  assert.equal(b.seen[0]!.type, 'application/x-tar');
  assert.ok(b.seen[0]!.raw.equals(Buffer.from(bytes)), 'the same 300 kB');
});

test('a container\'s followed log is streamed from its node as it is written', async () => {
  await store.insertImage(image);
  await store.insertVm({ ...vm('ctr-1', 'web'), nodeId: 'node-a' });
  await store.insertContainer({ id: 'ctr-1', image: 'default', restart: { policy: 'no' } as never, autoRemove: false, restartCount: 0, backoffStep: 0, userStopped: false, handledBoot: 0, restartAt: null, createdAt: 1 });
  let finish!: () => void;
  const finished = new Promise<void>((r) => (finish = r));
  a.handler = (_q, res) => {
    res.writeHead(200, { 'content-type': 'text/plain' });
    res.write('first line\n');
    void finished.then(() => res.end('last line\n'));
  };
  const r = await call('GET', '/v1/containers/web/logs?follow=1');
  assert.equal(r.headers.get('x-kiln-node'), 'a');
  const reader = r.body!.getReader();
  const first = await reader.read();
  assert.equal(Buffer.from(first.value!).toString(), 'first line\n', 'the first piece arrives while the node still writes');
  finish();
  let rest = '';
  for (let x = await reader.read(); !x.done; x = await reader.read()) rest += Buffer.from(x.value).toString();
  assert.equal(rest, 'last line\n');
  assert.equal(a.seen.at(-1)!.url, '/v1/containers/web/logs?follow=1');
  const none = await call('GET', '/v1/containers/nope');
  assert.deepEqual([none.status, (await none.json()).code], [404, 'KILN_ERR_CONTAINER_NOT_FOUND']);
});

test('/metrics: the API role\'s requests to nodes, its placements, each node\'s state', async () => {
  const r = await call('GET', '/metrics');
  assert.equal(r.status, 200);
  const text = await r.text();
  assert.match(text, /^kiln_api_forwarded_requests_total\{node="b",method="POST",status="201"\} \d+$/m);
  assert.match(text, /^kiln_api_placements_total\{what="vm",kind="pinned"\} 4$/m);
  assert.match(text, /^kiln_api_placements_total\{what="vm",kind="failed"\} 1$/m);
  assert.match(text, /^kiln_cluster_node_up\{node="c"\} 0$/m);
  assert.match(text, /^kiln_cluster_node_up\{node="a"\} 1$/m);
  assert.match(text, /^kiln_cluster_nodes\{state="lost"\} 1$/m);
  assert.match(text, /^kiln_cluster_node_disk_free_bytes\{node="b"\} 5000000000$/m);
});

test('a create a node refuses as over capacity (another API placed there first) goes to the next node; a pinned one gets the refusal as it came', async () => {
  const full = (_q: http.IncomingMessage, res: http.ServerResponse) => json(res, 429, { code: 'KILN_ERR_CAPACITY', message: 'this host is at capacity (vCPUs: 4 committed + 1 asked > 4)', details: {} });
  const made = (name: string) => (_q: http.IncomingMessage, res: http.ServerResponse) => json(res, 201, { id: `vm-${name}`, state: 'creating' });
  const body = JSON.stringify({ name: 'one', memory_mib: 128 });

  // The API's node view is refreshed every 250 ms: it may not show a and b ready again (an
  // earlier test re-registered them) yet. Until it does, a create is refused without being sent.
  a.handler = made('a');
  await until('the API places creates on a', async () => (await call('POST', '/v1/vms', body)).status === 201, 5_000, 50);
  reset();
  a.handler = full; // a has the more free memory: placed there first
  b.handler = made('b');
  const moved = await call('POST', '/v1/vms', body);
  assert.equal(moved.status, 201);
  assert.equal(moved.headers.get('x-kiln-node'), 'b');
  assert.deepEqual(await moved.json(), { id: 'vm-b', state: 'creating' });
  assert.deepEqual([a.seen.length, b.seen.length], [1, 1], 'sent once to each');
  assert.equal(b.seen[0]!.body, body, 'the same bytes to the second node');

  reset();
  const pinned = await fetch(`${api.url}/v1/vms`, { method: 'POST', headers: { authorization: `Bearer ${TOKEN}`, 'content-type': 'application/json', 'x-kiln-node': 'a' }, body });
  assert.equal(pinned.status, 429);
  assert.equal((await pinned.json()).message, 'this host is at capacity (vCPUs: 4 committed + 1 asked > 4)', "the node's own refusal");
  assert.deepEqual([a.seen.length, b.seen.length], [1, 0], 'a pinned create goes nowhere else');

  reset();
  b.handler = full;
  const none = await call('POST', '/v1/vms', body);
  assert.equal(none.status, 429);
  const err = await none.json();
  assert.equal(err.code, 'KILN_ERR_CAPACITY');
  assert.match(err.message, /at capacity when asked: a, b/);
  assert.deepEqual(err.details.full, ['a', 'b']);
  assert.equal(none.headers.get('x-kiln-node'), null, 'placed nowhere: no node named');
  assert.deepEqual([a.seen.length, b.seen.length], [1, 1]);

  // A template's clone is not sent on: the node may have built the template before refusing.
  reset();
  b.handler = made('b');
  const fromTemplate = await call('POST', '/v1/vms', JSON.stringify({ template: 'default', memory_mib: 128 }));
  assert.deepEqual([fromTemplate.status, (await fromTemplate.json()).code], [429, 'KILN_ERR_CAPACITY']);
  assert.deepEqual([a.seen.length, b.seen.length], [1, 0]);

  // Any other refusal is the answer: not sent on (the node judged the create itself).
  reset();
  a.handler = (_q, res) => json(res, 400, { code: 'KILN_ERR_VALIDATION', message: 'bad kernel args' });
  const bad = await call('POST', '/v1/vms', body);
  assert.deepEqual([bad.status, (await bad.json()).code], [400, 'KILN_ERR_VALIDATION']);
  assert.deepEqual([a.seen.length, b.seen.length], [1, 0]);
  a.handler = (_q, res) => json(res, 200, {});
  b.handler = (_q, res) => json(res, 200, {});
});
