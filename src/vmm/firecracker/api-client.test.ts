import assert from 'node:assert/strict';
import fs from 'node:fs/promises';
import http from 'node:http';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { isKilnError } from '../../errors.ts';
import { FirecrackerApiClient, type ApiRequest } from './api-client.ts';
import { tempDir } from './testing/harness.ts';

interface Seen {
  method: string;
  url: string;
  headers: http.IncomingHttpHeaders;
  body: string;
}

let dir: string;
let sock: string;
let server: http.Server;
const seen: Seen[] = [];
let reply: (req: Seen, res: http.ServerResponse) => void = (_r, res) => res.writeHead(204).end();

before(async () => {
  dir = await tempDir('api');
  sock = path.join(dir, 'api.sock');
  server = http.createServer(async (req, res) => {
    let body = '';
    for await (const c of req) body += c;
    const s = { method: req.method!, url: req.url!, headers: req.headers, body };
    seen.push(s);
    reply(s, res);
  });
  await new Promise<void>((r) => server.listen(sock, r));
});

after(async () => {
  server.closeAllConnections();
  await new Promise((r) => server.close(r));
  await fs.rm(dir, { recursive: true, force: true });
});

test('bodies go with Content-Length and JSON headers, never chunked', async () => {
  reply = (_r, res) => res.writeHead(204).end();
  const c = new FirecrackerApiClient(sock);
  await c.putDrive({ drive_id: 'root', is_root_device: false, is_read_only: true, path_on_host: '/x' });
  const r = seen.at(-1)!;
  assert.equal(r.method, 'PUT');
  assert.equal(r.url, '/drives/root');
  assert.equal(r.headers['transfer-encoding'], undefined);
  assert.equal(Number(r.headers['content-length']), Buffer.byteLength(r.body));
  assert.equal(r.headers['content-type'], 'application/json');
  assert.deepEqual(JSON.parse(r.body), { drive_id: 'root', is_root_device: false, is_read_only: true, path_on_host: '/x' });
});

test('GETs carry no body (Firecracker refuses GET bodies) and parse the JSON answer', async () => {
  reply = (_r, res) => res.writeHead(200, { 'Content-Type': 'application/json' }).end('{"firecracker_version":"1.13.1"}');
  const c = new FirecrackerApiClient(sock);
  assert.deepEqual(await c.getVersion(), { firecracker_version: '1.13.1' });
  const r = seen.at(-1)!;
  assert.equal(r.body, '');
  assert.equal(r.headers['content-type'], undefined);
  assert.ok(!r.headers['content-length'] || r.headers['content-length'] === '0', 'no GET body');
});

test("a non-2xx answer becomes KILN_ERR_VMM_FAILED carrying Firecracker's fault_message", async () => {
  const fault = 'The requested operation is not supported after starting the microVM.';
  reply = (_r, res) => res.writeHead(400, { 'Content-Type': 'application/json' }).end(JSON.stringify({ fault_message: fault }));
  const c = new FirecrackerApiClient(sock);
  await assert.rejects(c.putBootSource({ kernel_image_path: '/k' }), (e) => {
    assert.ok(isKilnError(e), 'a KilnError');
    assert.equal(e.code, 'KILN_ERR_VMM_FAILED');
    assert.ok(e.message.includes(fault), e.message);
    assert.ok(e.message.includes('PUT /boot-source'), e.message);
    assert.equal(e.details?.status, 400);
    assert.equal(e.details?.fault_message, fault);
    return true;
  });
});

test('a non-JSON error body is still reported', async () => {
  reply = (_r, res) => res.writeHead(500).end('internal kaboom');
  await assert.rejects(new FirecrackerApiClient(sock).action('InstanceStart'), (e) => isKilnError(e) && /internal kaboom/.test(e.message));
});

test('ids are path-encoded', async () => {
  reply = (_r, res) => res.writeHead(204).end();
  await new FirecrackerApiClient(sock).patchNetworkInterface({ iface_id: 'a b' });
  assert.equal(seen.at(-1)!.url, '/network-interfaces/a%20b');
});

test('an unreachable socket is a VMM error naming the socket', async () => {
  const missing = path.join(dir, 'nope.sock');
  await assert.rejects(
    new FirecrackerApiClient(missing).getVersion(),
    (e) => isKilnError(e) && e.code === 'KILN_ERR_VMM_FAILED' && e.message.includes(missing) && /ENOENT/.test(e.message),
  );
});

test('a request that gets no answer times out', async () => {
  reply = () => {}; // never answers
  const c = new FirecrackerApiClient(sock, { timeoutMs: 100 });
  const t0 = Date.now();
  await assert.rejects(c.getVersion(), (e) => isKilnError(e) && /no answer within 100 ms/.test(e.message));
  assert.ok(Date.now() - t0 < 2000, 'timed out promptly');
});

test('the transport is injectable', async () => {
  const calls: ApiRequest[] = [];
  const c = new FirecrackerApiClient('/unused', {
    transport: async (_s, req) => {
      calls.push(req);
      return { status: 204, body: '' };
    },
  });
  await c.patchVm('Paused');
  assert.deepEqual(
    calls.map((r) => [r.method, r.path, r.body]),
    [['PATCH', '/vm', { state: 'Paused' }]],
  );
});
