import assert from 'node:assert/strict';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { TokenCache, parseAuthChallenges, parseTokenResponse, readCredentialsFile } from './auth.ts';

test('parses the Bearer challenge a distribution registry sends', () => {
  const [c] = parseAuthChallenges('Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/alpine:pull"');
  assert.deepEqual(c, {
    scheme: 'bearer',
    params: { realm: 'https://auth.docker.io/token', service: 'registry.docker.io', scope: 'repository:library/alpine:pull' },
  });
});

test('parses several challenges, commas inside quotes, escapes and unquoted values', () => {
  const cs = parseAuthChallenges('Basic realm="basic-realm", Bearer realm="http://h/t?x=1", scope="repository:a:pull,push", error=invalid_token, Negotiate');
  assert.equal(cs.length, 3);
  assert.deepEqual(cs[0], { scheme: 'basic', params: { realm: 'basic-realm' } });
  assert.deepEqual(cs[1], { scheme: 'bearer', params: { realm: 'http://h/t?x=1', scope: 'repository:a:pull,push', error: 'invalid_token' } });
  assert.deepEqual(cs[2], { scheme: 'negotiate', params: {} });
  assert.deepEqual(parseAuthChallenges('Basic realm="a \\"quoted\\" realm"')[0]!.params, { realm: 'a "quoted" realm' });
  assert.deepEqual(parseAuthChallenges(''), []);
});

test('reads docker config.json credentials in both forms and every key spelling', async () => {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'kiln-auth-'));
  try {
    const file = path.join(dir, 'config.json');
    await fs.writeFile(file, JSON.stringify({
      auths: {
        'https://index.docker.io/v1/': { auth: Buffer.from('hub:pa:ss').toString('base64') },
        'http://127.0.0.1:5000/v2/': { username: 'u', password: 'p' },
        'ghcr.io': { auth: Buffer.from('g:h').toString('base64') },
      },
    }));
    assert.deepEqual(await readCredentialsFile(file, 'docker.io'), { username: 'hub', password: 'pa:ss' });
    assert.deepEqual(await readCredentialsFile(file, '127.0.0.1:5000'), { username: 'u', password: 'p' });
    assert.deepEqual(await readCredentialsFile(file, 'GHCR.io'), { username: 'g', password: 'h' });
    assert.equal(await readCredentialsFile(file, '127.0.0.1:5001'), undefined);
    assert.equal(await readCredentialsFile(path.join(dir, 'missing.json'), 'x'), undefined);
    await fs.writeFile(file, '{not json');
    await assert.rejects(readCredentialsFile(file, 'x'), { code: 'KILN_ERR_REGISTRY_AUTH' });
  } finally {
    await fs.rm(dir, { recursive: true, force: true });
  }
});

test('token cache expires tokens early; token responses in Docker and OAuth2 form', () => {
  const c = new TokenCache();
  const k = TokenCache.key('r', 's', 'repository:a:pull', 'u');
  c.set(k, 't1', 300, 0);
  assert.equal(c.get(k, 269_000), 't1');
  assert.equal(c.get(k, 270_000), undefined);
  assert.deepEqual(parseTokenResponse({ token: 'a', expires_in: 10 }), { token: 'a', expiresIn: 10 });
  assert.deepEqual(parseTokenResponse({ access_token: 'b' }), { token: 'b', expiresIn: 60 });
  assert.throws(() => parseTokenResponse({}), { code: 'KILN_ERR_REGISTRY_AUTH' });
});
