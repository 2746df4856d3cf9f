// The API is safe by default, against a real kilnd: token required (generated at first start,
// 0600), Host and Origin checked, state dir and database closed, the CLI on the same host
// working without setup, and --no-auth possible but loud.
import assert from 'node:assert/strict';
import fs from 'node:fs/promises';
import http from 'node:http';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import WebSocket from 'ws';
import { apiTokenPath, WS_PROTOCOL, WS_TOKEN_PREFIX } from '../src/sdk/api-token.ts';
import { KilnClient } from '../src/sdk/client.ts';
import { BACKEND_SKIP as skip } from './helpers/backend.ts';
import { expectApiError } from './helpers/api-errors.ts';
import { startKilnd, type TestDaemon } from './helpers/kilnd.ts';
import { runKiln } from './helpers/kiln-cli.ts';

/** node:http, not fetch: fetch will not send a Host header of the caller's choosing. */
function request(url: string, opts: { method?: string; headers?: Record<string, string>; body?: string } = {}): Promise<{ status: number; body: { code?: string; [k: string]: unknown } }> {
  return new Promise((resolve, reject) => {
    const req = http.request(url, { method: opts.method ?? 'GET', headers: opts.headers, timeout: 10_000 }, (res) => {
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (d: string) => (text += d));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: text ? JSON.parse(text) : {} }));
    });
    req.on('timeout', () => req.destroy(new Error(`${url}: no answer in 10 s`)));
    req.on('error', reject);
    req.end(opts.body);
  });
}

/** Opens the console WebSocket; resolves with the HTTP status of the refusal (or 101 if upgraded). */
function consoleStatus(url: string, vm: string, protocols?: string[], headers: Record<string, string> = {}): Promise<number> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(`${url.replace(/^http/, 'ws')}/v1/vms/${vm}/console`, protocols, { headers, handshakeTimeout: 10_000 });
    ws.once('open', () => {
      ws.terminate();
      resolve(101);
    });
    ws.once('unexpected-response', (req, res) => {
      res.resume();
      res.on('end', () => {
        req.destroy();
        resolve(res.statusCode ?? 0);
      });
    });
    ws.once('error', reject);
  });
}

const modeOf = async (p: string) => (await fs.stat(p)).mode & 0o777;

describe('API auth on by default', { skip }, () => {
  let d: TestDaemon;
  before(async () => {
    d = await startKilnd();
  });
  after(() => d?.dispose());

  test('no token → 401 KILN_ERR_UNAUTHORIZED; wrong token → 401; the state dir token → 200', async () => {
    const none = await request(`${d.url}/v1/vms`);
    assert.equal(none.status, 401);
    assert.equal(none.body.code, 'KILN_ERR_UNAUTHORIZED');
    const wrong = await request(`${d.url}/v1/vms`, { headers: { authorization: `Bearer ${d.token.slice(0, -1)}x` } });
    assert.equal(wrong.status, 401);
    assert.equal(wrong.body.code, 'KILN_ERR_UNAUTHORIZED');
    const right = await request(`${d.url}/v1/vms`, { headers: { authorization: `Bearer ${(await fs.readFile(apiTokenPath(d.stateDir), 'utf8')).trim()}` } });
    assert.equal(right.status, 200, JSON.stringify(right.body));
    assert.ok(Array.isArray(right.body.vms));
    // The SDK: an option naming the state dir, or the helper.
    assert.ok(Array.isArray(await new KilnClient({ url: d.url, stateDir: d.stateDir }).listVms()));
    assert.ok(Array.isArray(await KilnClient.fromStateDir(d.stateDir, { url: d.url }).listVms()));
    await expectApiError(new KilnClient({ url: d.url, token: 'nope' }).listVms(), 401, 'KILN_ERR_UNAUTHORIZED');
  });

  test('/healthz needs no token and carries no secret', async () => {
    const h = await request(`${d.url}/healthz`);
    assert.equal(h.status, 200);
    assert.equal(h.body.auth, 'token');
    assert.equal(h.body.auth_warning, undefined);
    assert.ok(!JSON.stringify(h.body).includes(d.token), 'the token is not in /healthz');
    assert.equal((await request(`${d.url}/metrics`)).status, 401);
  });

  test('a foreign Host is refused (DNS rebinding), even with the token and on /healthz', async () => {
    const port = new URL(d.url).port;
    for (const p of ['/v1/vms', '/healthz', '/']) {
      const r = await request(`${d.url}${p}`, { headers: { host: `rebind.example:${port}`, ...d.authHeaders } });
      assert.equal(r.status, 403, p);
      assert.equal(r.body.code, 'KILN_ERR_HOST_NOT_ALLOWED', p);
    }
    const local = await request(`${d.url}/v1/vms`, { headers: { host: `localhost:${port}`, ...d.authHeaders } });
    assert.equal(local.status, 200, 'localhost is a name kilnd serves');
  });

  test('a foreign Origin on a POST is refused and creates nothing; the same origin passes', async () => {
    const port = new URL(d.url).port;
    const before = (await d.client.listVolumes()).length;
    for (const origin of ['http://evil.example', 'null', `http://127.0.0.1:${Number(port) + 1}`]) {
      const r = await request(`${d.url}/v1/volumes`, {
        method: 'POST', body: JSON.stringify({ name: 'xsite', size_mib: 8 }),
        headers: { 'content-type': 'application/json', origin, ...d.authHeaders },
      });
      assert.equal(r.status, 403, origin);
      assert.equal(r.body.code, 'KILN_ERR_ORIGIN_NOT_ALLOWED', origin);
    }
    assert.equal((await d.client.listVolumes()).length, before, 'no volume was made');
    const same = await request(`${d.url}/v1/volumes/nope`, { headers: { origin: `http://127.0.0.1:${port}`, ...d.authHeaders } });
    assert.equal(same.body.code, 'KILN_ERR_VOLUME_NOT_FOUND', 'a same-origin request reaches the route');
  });

  test('console WebSocket: refused before the upgrade without the token; header or subprotocol token accepted', async () => {
    assert.equal(await consoleStatus(d.url, 'vm-nope'), 401);
    assert.equal(await consoleStatus(d.url, 'vm-nope', [WS_PROTOCOL, `${WS_TOKEN_PREFIX}wrong`]), 401);
    assert.equal(await consoleStatus(d.url, 'vm-nope', [WS_PROTOCOL, `${WS_TOKEN_PREFIX}${d.token}`]), 404, 'past the guard: no such VM');
    assert.equal(await consoleStatus(d.url, 'vm-nope', undefined, d.authHeaders), 404);
    assert.equal(await consoleStatus(d.url, 'vm-nope', [WS_PROTOCOL, `${WS_TOKEN_PREFIX}${d.token}`], { origin: 'http://evil.example' }), 403);
  });

  test('the CLI on the same host needs no token: it reads the state dir kilnd uses', async () => {
    const env = { PATH: process.env.PATH, HOME: process.env.HOME, KILN_STATE_DIR: d.stateDir } as NodeJS.ProcessEnv;
    const ls = await runKiln(d.url, ['--json', 'vm', 'ls'], { env });
    assert.equal(ls.code, 0, ls.stderr);
    assert.ok(Array.isArray(JSON.parse(ls.stdout)));
    const flag = await runKiln(d, ['--json', 'volume', 'ls']);
    assert.equal(flag.code, 0, flag.stderr);
    const without = await runKiln(d.url, ['vm', 'ls'], { env: { PATH: process.env.PATH, HOME: process.env.HOME, KILN_STATE_DIR: path.join(d.stateDir, 'nowhere') } });
    assert.equal(without.code, 1);
    assert.match(without.stderr, /KILN_ERR_UNAUTHORIZED[\s\S]*api-token/, 'the refusal says where the token is read from');
  });

  test('state dir 0700, database and token 0600; loosened modes are tightened on the next start, the token kept', async () => {
    const db = path.join(d.stateDir, 'kiln.db');
    const token = apiTokenPath(d.stateDir);
    assert.equal(await modeOf(d.stateDir), 0o700);
    assert.equal(await modeOf(db), 0o600);
    assert.equal(await modeOf(token), 0o600);
    for (const f of [`${db}-wal`, `${db}-shm`]) if (await fs.stat(f).catch(() => null)) assert.equal(await modeOf(f), 0o600, f);
    const before = d.token;
    await d.stop();
    await fs.chmod(d.stateDir, 0o755);
    await fs.chmod(db, 0o644);
    await fs.chmod(token, 0o644);
    d = await startKilnd({ stateDir: d.stateDir, network: d.network });
    assert.equal(await modeOf(d.stateDir), 0o700);
    assert.equal(await modeOf(db), 0o600);
    assert.equal(await modeOf(token), 0o600);
    assert.equal(d.token, before, 'the token survives a restart');
    assert.ok(Array.isArray(await d.client.listVms()));
  });
});

describe('--no-auth', { skip }, () => {
  let d: TestDaemon;
  before(async () => {
    d = await startKilnd({ serveArgs: ['--no-auth'] });
  });
  after(() => d?.dispose());

  test('serves without a token, warns at start and in /healthz, still checks Host', async () => {
    assert.match(d.output(), /WARNING: kilnd runs with --no-auth/);
    const h = await request(`${d.url}/healthz`);
    assert.equal(h.body.auth, 'none');
    assert.match(String(h.body.auth_warning), /--no-auth/);
    const ls = await request(`${d.url}/v1/vms`);
    assert.equal(ls.status, 200);
    assert.equal(await fs.stat(apiTokenPath(d.stateDir)).catch(() => null), null, 'no token is made');
    const rebind = await request(`${d.url}/v1/vms`, { headers: { host: 'rebind.example' } });
    assert.equal(rebind.body.code, 'KILN_ERR_HOST_NOT_ALLOWED');
    const cli = await runKiln(d.url, ['--json', 'vm', 'ls'], { env: { PATH: process.env.PATH, HOME: process.env.HOME } });
    assert.equal(cli.code, 0, cli.stderr);
  });
});
