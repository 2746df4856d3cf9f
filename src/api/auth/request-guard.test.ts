import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { pino } from 'pino';
import WebSocket from 'ws';
import type { FastifyInstance } from 'fastify';
import { defaultConfig } from '../../config.ts';
import type { Daemon } from '../../daemon.ts';
import { KilnError } from '../../errors.ts';
import { WS_PROTOCOL, WS_TOKEN_PREFIX } from '../../sdk/api-token.ts';
import { buildServer } from '../server.ts';
import { servedHostNames } from './request-guard.ts';

const TOKEN = 'tok-0123456789abcdefghijklmnopqrstuvwxyz_ABC-';

// Only the guard is under test: the routes reached answer "no such VM" or "no route".
function fakeDaemon(auth: 'token' | 'none', extra: Partial<ReturnType<typeof defaultConfig>> = {}): Daemon {
  return {
    config: { ...defaultConfig({}), apiToken: auth === 'token' ? TOKEN : undefined, auth, ...extra },
    version: 'test',
    vms: { get: async (id: string) => { throw new KilnError('KILN_ERR_VM_NOT_FOUND', `no VM ${id}`); } },
  } as unknown as Daemon;
}

describe('request guard (token on)', () => {
  let app: FastifyInstance;
  before(async () => {
    app = await buildServer(fakeDaemon('token', { allowedHosts: ['kiln.internal'] }), pino({ level: 'silent' }));
  });
  after(() => app.close());
  const get = (headers: Record<string, string>, url = '/v1/vms/x') => app.inject({ method: 'GET', url, headers: { host: '127.0.0.1:18080', ...headers } });

  test('no token, a wrong one, a malformed header: 401 KILN_ERR_UNAUTHORIZED; the right one passes', async () => {
    for (const h of [{} as Record<string, string>, { authorization: `Bearer ${TOKEN}x` }, { authorization: 'Bearer ' }, { authorization: TOKEN }, { authorization: `Basic ${TOKEN}` }]) {
      const r = await get(h);
      assert.equal(r.statusCode, 401, JSON.stringify(h));
      assert.equal(r.json().code, 'KILN_ERR_UNAUTHORIZED');
    }
    const ok = await get({ authorization: `Bearer ${TOKEN}` });
    assert.equal(ok.json().code, 'KILN_ERR_VM_NOT_FOUND', 'past the guard, the route answers');
    assert.equal((await get({ authorization: `bearer ${TOKEN}` })).json().code, 'KILN_ERR_VM_NOT_FOUND', 'scheme is case-insensitive');
  });

  test('the token in a subprotocol counts only on a WebSocket upgrade', async () => {
    const r = await get({ 'sec-websocket-protocol': `${WS_PROTOCOL}, ${WS_TOKEN_PREFIX}${TOKEN}` });
    assert.equal(r.statusCode, 401);
  });

  test('foreign or malformed Host: 403 KILN_ERR_HOST_NOT_ALLOWED, even with the token and on public paths', async () => {
    for (const host of ['evil.example', 'evil.example:18080', '127.0.0.1.nip.io', 'localhost.evil.example', 'a@127.0.0.1', '[::2]:80', '127.0.0.1/x']) {
      for (const url of ['/v1/vms/x', '/', '/healthz']) {
        const r = await app.inject({ method: 'GET', url, headers: { host, authorization: `Bearer ${TOKEN}` } });
        assert.equal(r.statusCode, 403, `${host} ${url}`);
        assert.equal(r.json().code, 'KILN_ERR_HOST_NOT_ALLOWED');
      }
    }
    for (const host of ['localhost:18080', 'LOCALHOST', '127.0.0.1', '127.1.2.3:9', '[::1]:18080', 'kiln.internal:18080', 'localhost.']) {
      const r = await app.inject({ method: 'GET', url: '/v1/vms/x', headers: { host, authorization: `Bearer ${TOKEN}` } });
      assert.equal(r.json().code, 'KILN_ERR_VM_NOT_FOUND', host);
    }
  });

  test('an Origin other than the addressed one: 403 KILN_ERR_ORIGIN_NOT_ALLOWED; the same origin passes', async () => {
    for (const origin of ['http://evil.example', 'null', 'http://127.0.0.1:18081', 'http://localhost:18080', 'file://', 'garbage']) {
      const r = await app.inject({ method: 'POST', url: '/v1/vms', headers: { host: '127.0.0.1:18080', origin, authorization: `Bearer ${TOKEN}`, 'content-type': 'application/json' }, payload: '{}' });
      assert.equal(r.statusCode, 403, origin);
      assert.equal(r.json().code, 'KILN_ERR_ORIGIN_NOT_ALLOWED');
    }
    const same = await get({ origin: 'http://127.0.0.1:18080', authorization: `Bearer ${TOKEN}` });
    assert.equal(same.json().code, 'KILN_ERR_VM_NOT_FOUND');
  });

  test('/healthz and the dashboard need no token; openapi and metrics do', async () => {
    assert.equal((await get({}, '/')).statusCode, 200);
    assert.equal((await get({}, '/ui/app.js')).statusCode, 200);
    assert.equal((await get({}, '/openapi.json')).statusCode, 401);
    assert.equal((await get({}, '/metrics')).statusCode, 401);
    assert.equal((await get({}, '/healthz?x=1')).statusCode !== 401, true);
  });
});

describe('request guard over a real socket: WebSocket subprotocol token', () => {
  let app: FastifyInstance;
  let url: string;
  before(async () => {
    app = await buildServer(fakeDaemon('token'), pino({ level: 'silent' }));
    url = `${(await app.listen({ host: '127.0.0.1', port: 0 })).replace('http', 'ws')}/v1/vms/x/console`;
  });
  after(() => app.close());

  const refusal = (protocols: string[] | undefined, headers: Record<string, string> = {}) =>
    new Promise<{ status: number; body: string }>((resolve, reject) => {
      const ws = new WebSocket(url, protocols, { headers });
      ws.once('open', () => reject(new Error('unexpectedly upgraded')));
      ws.once('unexpected-response', (req, res) => {
        let body = '';
        res.on('data', (d: Buffer) => (body += d));
        res.on('end', () => {
          req.destroy();
          resolve({ status: res.statusCode ?? 0, body });
        });
      });
      ws.once('error', reject);
    });

  test('no token: 401 before the upgrade; the token as subprotocol or header reaches the route', async () => {
    assert.equal((await refusal(undefined)).status, 401);
    assert.equal((await refusal([WS_PROTOCOL, `${WS_TOKEN_PREFIX}wrong`])).status, 401);
    const viaProto = await refusal([WS_PROTOCOL, `${WS_TOKEN_PREFIX}${TOKEN}`]);
    assert.equal(viaProto.status, 404);
    assert.match(viaProto.body, /KILN_ERR_VM_NOT_FOUND/);
    assert.equal((await refusal(undefined, { authorization: `Bearer ${TOKEN}` })).status, 404);
    assert.equal((await refusal(undefined, { authorization: `Bearer ${TOKEN}`, origin: 'http://evil.example' })).status, 403);
  });
});

describe('request guard with --no-auth', () => {
  test('no token needed, Host and Origin still checked', async () => {
    const app = await buildServer(fakeDaemon('none'), pino({ level: 'silent' }));
    try {
      assert.equal((await app.inject({ url: '/v1/vms/x', headers: { host: 'localhost' } })).json().code, 'KILN_ERR_VM_NOT_FOUND');
      assert.equal((await app.inject({ url: '/v1/vms/x', headers: { host: 'evil.example' } })).json().code, 'KILN_ERR_HOST_NOT_ALLOWED');
      assert.equal((await app.inject({ url: '/v1/vms/x', headers: { host: 'localhost', origin: 'http://evil.example' } })).json().code, 'KILN_ERR_ORIGIN_NOT_ALLOWED');
    } finally {
      await app.close();
    }
  });

  test('auth on without a token is refused at build, not served open', async () => {
    const d = { config: { ...defaultConfig({}), apiToken: undefined, auth: 'token' }, version: 'test' } as unknown as Daemon;
    await assert.rejects(buildServer(d, pino({ level: 'silent' })), /no token/);
  });
});

test('served host names: loopback, the listen address, configured names; a wildcard bind adds the host addresses', () => {
  const n = servedHostNames('10.1.2.3', ['Kiln.Example.']);
  for (const h of ['localhost', '127.0.0.1', '::1', '10.1.2.3', 'kiln.example']) assert.ok(n.has(h), h);
  assert.ok(!n.has('0.0.0.0'));
  const w = servedHostNames('0.0.0.0', []);
  assert.ok(!w.has('0.0.0.0') && w.has('127.0.0.1'));
});
