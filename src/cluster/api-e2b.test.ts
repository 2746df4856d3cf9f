// The API role's E2B listener on a real SQLite store and real sockets; each "node" is an HTTP
// server standing in for a node's E2B listener (its lists answered by the node's own listPage
// and listedView), recording what reached it. Covers: the API key; creates placed with template
// locality and moved off a node that refuses the connection; v1/v2 lists merged and paged
// across nodes; per-sandbox routes and the sandbox plane (headers and Host) relayed to the
// owner, a server stream chunk by chunk, a WebSocket upgrade piped; a lost node's sandboxes
// answering E2B's 404 (control plane) and 502 (sandbox plane).
import assert from 'node:assert/strict';
import fs from 'node:fs/promises';
import http from 'node:http';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import pino from 'pino';
import { e2bApiKey } from '../e2b/api-key.ts';
import { listedView, listPage } from '../e2b/control-plane.ts';
import { e2bErrorBody } from '../e2b/errors.ts';
import type { SandboxRecord } from '../e2b/sandbox-store.ts';
import { capacity, image, vm } from '../store/conformance.ts';
import { SqliteStore } from '../store/sqlite-store.ts';
import { freePort } from '../../test/helpers/ports.ts';
import { ClusterE2b } from './api-e2b.ts';

const TOKEN = 'cluster-token';
const KEY = e2bApiKey(TOKEN);

interface Seen {
  method: string;
  url: string;
  headers: http.IncomingHttpHeaders;
  body: string;
}

/** A node's E2B listener: sandboxes it lists, what reached it, a stream the test releases. */
class FakeNode {
  seen: Seen[] = [];
  server!: http.Server;
  url = '';
  releaseStream: (() => void) | null = null;

  constructor(
    readonly name: string,
    readonly sandboxes: SandboxRecord[],
  ) {}

  async start(): Promise<void> {
    this.server = http.createServer((req, res) => {
      const chunks: Buffer[] = [];
      req.on('data', (c: Buffer) => chunks.push(c));
      req.on('end', () => {
        const s: Seen = { method: req.method!, url: req.url!, headers: req.headers, body: Buffer.concat(chunks).toString() };
        this.seen.push(s);
        const u = new URL(req.url!, 'http://x');
        const q = Object.fromEntries(u.searchParams) as Record<string, string>;
        if (req.headers['e2b-sandbox-id'] || /^\d+-/.test(String(req.headers.host))) {
          if (u.pathname === '/stream') {
            res.writeHead(200, { 'content-type': 'application/connect+json' });
            res.write('first|');
            this.releaseStream = () => res.end('second');
            return;
          }
          return json(res, 200, { node: this.name, host: req.headers.host, body: s.body });
        }
        if ((u.pathname === '/sandboxes' || u.pathname === '/v2/sandboxes') && req.method === 'POST') return json(res, 201, { sandboxID: `new-on-${this.name}`, templateID: JSON.parse(s.body).templateID });
        if (u.pathname === '/v2/sandboxes') {
          let page: ReturnType<typeof listPage>;
          try {
            page = listPage(this.sandboxes, q);
          } catch (e) {
            return json(res, 400, e2bErrorBody(e));
          }
          const { items, next } = page;
          if (next) res.setHeader('x-next-token', next);
          return json(res, 200, items.map(listedView));
        }
        if (u.pathname === '/sandboxes' && req.method === 'GET') {
          return json(res, 200, listPage(this.sandboxes, { ...q, state: 'running' }).items.map(listedView));
        }
        json(res, 200, { node: this.name, path: u.pathname });
      });
    });
    this.server.on('upgrade', (req, socket) => {
      this.seen.push({ method: 'UPGRADE', url: req.url!, headers: req.headers, body: '' });
      socket.write('HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\n\r\n');
      socket.on('data', (d: Buffer) => socket.write(`${this.name}:${d}`));
      socket.on('end', () => socket.end());
    });
    await new Promise<void>((r) => this.server.listen(0, '127.0.0.1', () => r()));
    this.url = `http://127.0.0.1:${(this.server.address() as net.AddressInfo).port}`;
  }

  close(): Promise<void> {
    this.server.closeAllConnections();
    return new Promise((r) => this.server.close(() => r()));
  }
}

function json(res: http.ServerResponse, status: number, body: unknown): void {
  res.writeHead(status, { 'content-type': 'application/json' });
  res.end(JSON.stringify(body));
}

const sandbox = (id: string, startedAt: number, metadata: Record<string, string> = {}, state: 'running' | 'paused' = 'running'): SandboxRecord => ({
  id, vmId: `vm-${id}`, templateId: 'base', metadata, envVars: {}, accessToken: 't', autoPause: false, state,
  cpuCount: 1, memoryMb: 512, startedAt, endAt: startedAt + 300_000,
});

// Large nodes: a's four VMs and b's two leave them within locality's bonus of each other.
const big = capacity({ vcpus: 64, memoryMib: 65536 });
let dir: string;
let store: SqliteStore;
let a: FakeNode;
let b: FakeNode;
let e2b: ClusterE2b;
let base: string;

before(async () => {
  dir = await fs.mkdtemp(path.join(os.tmpdir(), 'kiln-api-e2b-'));
  store = new SqliteStore(path.join(dir, 'kiln.db'));
  a = new FakeNode('a', [sandbox('sba1', 1000, { team: 'x' }), sandbox('sba2', 3000, { team: 'y' }), sandbox('sba3', 5000, {}, 'paused')]);
  b = new FakeNode('b', [sandbox('sbb1', 2000, { team: 'x' }), sandbox('sbb2', 4000, { team: 'x' })]);
  await a.start();
  await b.start();
  await store.insertImage(image);
  await store.registerNode({ id: 'node-a', name: 'a', url: 'http://127.0.0.1:1', e2bUrl: a.url, capacity: big }, Date.now());
  await store.registerNode({ id: 'node-b', name: 'b', url: 'http://127.0.0.1:1', e2bUrl: b.url, capacity: big }, Date.now());
  // A node without an E2B listener is never asked.
  await store.registerNode({ id: 'node-c', name: 'c', url: 'http://127.0.0.1:1', capacity: capacity() }, Date.now());
  for (const [n, node] of [[a, 'node-a'], [b, 'node-b']] as const) {
    for (const s of n.sandboxes) {
      await store.insertVm({ ...vm(s.vmId, s.id), nodeId: node, state: s.state === 'paused' ? 'paused' : 'ready', memoryMib: 512, labels: { 'kiln.kind': 'sandbox', 'e2b.sandbox': s.id, 'e2b.template': node === 'node-a' ? 'tpl-on-a' : 'base' } });
    }
  }
  // A plain VM named like a sandbox id is not one.
  await store.insertVm({ ...vm('vm-plain', 'plainvm'), nodeId: 'node-a', state: 'ready' });
  e2b = new ClusterE2b({ store, token: TOKEN, host: '127.0.0.1', port: 0, log: pino({ level: 'silent' }), k: 3 });
  base = await e2b.listen();
});

after(async () => {
  await e2b?.close();
  await a?.close();
  await b?.close();
  store?.close();
  await fs.rm(dir, { recursive: true, force: true });
});

const call = (p: string, init: RequestInit & { headers?: Record<string, string> } = {}) =>
  fetch(`${base}${p}`, { ...init, headers: { 'x-api-key': KEY, ...init.headers } });

test('the control plane needs the cluster\'s E2B API key (the one every node derives from the token); /health does not', async () => {
  assert.equal((await fetch(`${base}/health`)).status, 200);
  const none = await fetch(`${base}/v2/sandboxes`);
  assert.equal(none.status, 401);
  assert.deepEqual(await none.json(), { code: 401, message: 'missing X-API-KEY header' });
  assert.equal((await call('/v2/sandboxes', { headers: { 'x-api-key': e2bApiKey('another-token') } })).status, 401);
  assert.equal((await call('/no/such')).status, 404);
});

test('creates are placed with template locality, relayed as they came, and moved off a node that refuses the connection', async () => {
  const body = JSON.stringify({ templateID: 'tpl-on-a', timeout: 60 });
  const r = await call('/sandboxes', { method: 'POST', body, headers: { 'content-type': 'application/json' } });
  assert.equal(r.status, 201);
  assert.equal(r.headers.get('x-kiln-node'), 'a', 'the node that runs sandboxes of the template, though b has more free');
  assert.deepEqual(await r.json(), { sandboxID: 'new-on-a', templateID: 'tpl-on-a' });
  const got = a.seen.at(-1)!;
  assert.equal(got.body, body);
  assert.equal(got.headers['x-api-key'], KEY);
  const other = await call('/sandboxes', { method: 'POST', body: JSON.stringify({ templateID: 'elsewhere' }) });
  assert.equal(other.headers.get('x-kiln-node'), 'b', 'without locality: the node with more free');
  const pinned = await call('/sandboxes', { method: 'POST', body, headers: { 'x-kiln-node': 'b' } });
  assert.equal(pinned.headers.get('x-kiln-node'), 'b', 'x-kiln-node pins the create');
  const pinnedNowhere = await call('/sandboxes', { method: 'POST', body, headers: { 'x-kiln-node': 'c' } });
  assert.equal(pinnedNowhere.status, 503, 'c serves no E2B');
  assert.match(((await pinnedNowhere.json()) as { message: string }).message, /^KILN_ERR_NODE_UNAVAILABLE: /);
  // b's listener goes away: nothing is created there, a takes it.
  const bUrl = b.url;
  await store.registerNode({ id: 'node-b', name: 'b', url: 'http://127.0.0.1:1', e2bUrl: `http://127.0.0.1:${await freePort()}`, capacity: big }, Date.now());
  const moved = await call('/v2/sandboxes', { method: 'POST', body: JSON.stringify({ templateID: 'base' }) });
  assert.equal(moved.status, 201);
  assert.equal(moved.headers.get('x-kiln-node'), 'a');
  await store.registerNode({ id: 'node-b', name: 'b', url: 'http://127.0.0.1:1', e2bUrl: bUrl, capacity: big }, Date.now());
  assert.equal((await call('/sandboxes', { method: 'POST', body: '{not json' })).status, 400);
});

test('lists are every ready node\'s, merged in order; v2 filters and pages across nodes', async () => {
  const v1 = (await (await call('/sandboxes')).json()) as { sandboxID: string }[];
  assert.deepEqual(v1.map((s) => s.sandboxID), ['sba1', 'sbb1', 'sba2', 'sbb2'], 'running ones, oldest first');
  const all = (await (await call('/v2/sandboxes?state=running,paused')).json()) as { sandboxID: string }[];
  assert.deepEqual(all.map((s) => s.sandboxID), ['sba1', 'sbb1', 'sba2', 'sbb2', 'sba3']);
  const meta = encodeURIComponent('team=x');
  const pages: string[][] = [];
  let next: string | null = null;
  do {
    const r = await call(`/v2/sandboxes?metadata=${meta}&limit=2${next ? `&nextToken=${encodeURIComponent(next)}` : ''}`);
    assert.equal(r.status, 200);
    pages.push(((await r.json()) as { sandboxID: string }[]).map((s) => s.sandboxID));
    next = r.headers.get('x-next-token');
  } while (next && pages.length < 5);
  assert.deepEqual(pages, [['sba1', 'sbb1'], ['sbb2']], 'metadata filter, two per page, across both nodes');
  const desc = (await (await call('/v2/sandboxes?order=desc&limit=3')).json()) as { sandboxID: string }[];
  assert.deepEqual(desc.map((s) => s.sandboxID), ['sba3', 'sbb2', 'sba2']);
  const bad = await call('/v2/sandboxes?state=sleeping');
  assert.equal(bad.status, 400, 'a node\'s refusal comes back as it was');
});

test('per-sandbox routes and the sandbox plane go to the owner node, Host and headers kept; a server stream arrives chunk by chunk', async () => {
  const r = await call('/sandboxes/sbb2/timeout', { method: 'POST', body: JSON.stringify({ timeout: 30 }) });
  assert.equal(r.status, 200);
  assert.deepEqual(await r.json(), { node: 'b', path: '/sandboxes/sbb2/timeout' });
  assert.equal(b.seen.at(-1)!.body, '{"timeout":30}');
  assert.deepEqual(await (await call('/v2/sandboxes/sba1/connect', { method: 'POST', body: '{}' })).json(), { node: 'a', path: '/v2/sandboxes/sba1/connect' });
  const unknown = await call('/sandboxes/nosuchsandbox');
  assert.equal(unknown.status, 404);
  assert.equal((await call('/sandboxes/plainvm')).status, 404, 'a VM that is not a sandbox');

  // envd by headers (E2B_SANDBOX_URL) and a port by Host (wildcard DNS): the node sees both as sent.
  const byHeader = await fetch(`${base}/files?path=x`, { method: 'POST', body: 'bytes', headers: { 'e2b-sandbox-id': 'sba2', 'e2b-sandbox-port': '49983' } });
  assert.deepEqual(await byHeader.json(), { node: 'a', host: new URL(base).host, body: 'bytes' });
  assert.equal(a.seen.at(-1)!.headers['e2b-sandbox-port'], '49983');
  const byHost = await new Promise<string>((resolve, reject) => {
    const u = new URL(base);
    http.get({ host: u.hostname, port: u.port, path: '/', headers: { host: '8000-sbb1.e2b.example.com' } }, (res) => {
      let t = '';
      res.on('data', (c) => (t += c));
      res.on('end', () => resolve(t));
    }).on('error', reject);
  });
  assert.deepEqual(JSON.parse(byHost), { node: 'b', host: '8000-sbb1.e2b.example.com', body: '' });

  const stream = await fetch(`${base}/stream`, { method: 'POST', headers: { 'e2b-sandbox-id': 'sbb1', 'e2b-sandbox-port': '49983' } });
  const reader = stream.body!.getReader();
  const first = await reader.read();
  assert.equal(Buffer.from(first.value!).toString(), 'first|', 'the first message before the node ends the stream');
  assert.ok(b.releaseStream);
  b.releaseStream!();
  let rest = '';
  for (let c = await reader.read(); !c.done; c = await reader.read()) rest += Buffer.from(c.value).toString();
  assert.equal(rest, 'second');
});

test('a WebSocket upgrade to a sandbox port is piped to the owner node', async () => {
  const u = new URL(base);
  const s = net.connect(Number(u.port), u.hostname);
  s.write('GET /ws HTTP/1.1\r\nhost: 3000-sba1.e2b.example.com\r\nupgrade: websocket\r\nconnection: Upgrade\r\n\r\n');
  let got = '';
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no echo: ${got}`)), 5000);
    s.on('data', (d) => {
      got += d;
      if (got.includes('\r\n\r\n') && !got.includes('a:ping')) s.write('ping');
      if (got.includes('a:ping')) (clearTimeout(timer), resolve());
    });
  });
  s.destroy();
  assert.match(got, /^HTTP\/1\.1 101/);
  assert.equal(a.seen.at(-1)!.headers.host, '3000-sba1.e2b.example.com');
});

test('a lost node\'s sandboxes: E2B\'s 404 on the control plane, 502 on the sandbox plane; they are not listed', async () => {
  await store.markNodesLost(Date.now() + 1, Date.now());
  // Only a and b were marked; bring a back so the list has a node to ask.
  await store.registerNode({ id: 'node-a', name: 'a', url: 'http://127.0.0.1:1', e2bUrl: a.url, capacity: big }, Date.now());
  for (const s of a.sandboxes) await store.updateVm(s.vmId, { state: 'ready' });
  const r = await call('/sandboxes/sbb1', { method: 'DELETE' });
  assert.equal(r.status, 404);
  const body = (await r.json()) as { code: number; message: string };
  assert.equal(body.code, 404);
  assert.match(body.message, /node b, which is lost/);
  const envd = await fetch(`${base}/health`, { headers: { 'e2b-sandbox-id': 'sbb1', 'e2b-sandbox-port': '49983' } });
  assert.equal(envd.status, 502);
  assert.equal(((await envd.json()) as { code: number }).code, 502);
  const listed = (await (await call('/sandboxes')).json()) as { sandboxID: string }[];
  assert.deepEqual(listed.map((s) => s.sandboxID), ['sba1', 'sba2']);
});
