import assert from 'node:assert/strict';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, test } from 'node:test';
import { apiTokenPath, discoverApiToken, readApiToken } from '../../sdk/api-token.ts';
import { ensureApiToken, tokenMatches } from './token-file.ts';

const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'kiln-token-'));
after(() => fs.rm(dir, { recursive: true, force: true }));

test('first start writes a 0600 token; later starts keep it and re-tighten the mode', async () => {
  const sd = await fs.mkdtemp(path.join(dir, 'sd-'));
  const t1 = await ensureApiToken(sd);
  assert.match(t1, /^[A-Za-z0-9_-]{43}$/, '32 random bytes, base64url');
  assert.equal((await fs.stat(apiTokenPath(sd))).mode & 0o777, 0o600);
  await fs.chmod(apiTokenPath(sd), 0o644);
  assert.equal(await ensureApiToken(sd), t1);
  assert.equal((await fs.stat(apiTokenPath(sd))).mode & 0o777, 0o600);
  assert.equal(readApiToken(sd), t1);
  assert.notEqual(await ensureApiToken(await fs.mkdtemp(path.join(dir, 'sd-'))), t1, 'each state dir its own');
  assert.deepEqual((await fs.readdir(sd)).sort(), ['api-token'], 'no temporary file left');
});

test('KILN_API_TOKEN overrides and is what the file then holds', async () => {
  const sd = await fs.mkdtemp(path.join(dir, 'sd-'));
  await ensureApiToken(sd);
  assert.equal(await ensureApiToken(sd, 'my-own-token'), 'my-own-token');
  assert.equal(readApiToken(sd), 'my-own-token');
});

test('constant-time comparison still compares', () => {
  assert.ok(tokenMatches('abc', 'abc'));
  assert.ok(!tokenMatches('abc', 'abd'));
  assert.ok(!tokenMatches('abc', 'abcd'));
  assert.ok(!tokenMatches('', 'abc'));
});

test('clients find the token: env, then the named state dir, then the default dir for loopback only', async () => {
  const sd = await fs.mkdtemp(path.join(dir, 'sd-'));
  const t = await ensureApiToken(sd);
  assert.equal(discoverApiToken('http://10.0.0.1:1', { env: { KILN_API_TOKEN: 'e' }, stateDir: sd }), 'e');
  assert.equal(discoverApiToken('http://10.0.0.1:1', { env: {}, stateDir: sd }), t);
  assert.equal(discoverApiToken('http://10.0.0.1:1', { env: { KILN_STATE_DIR: sd } }), t);
  assert.equal(discoverApiToken('http://10.0.0.1:1', { env: {} }), undefined, 'the default dir is never sent to a remote kilnd');
  assert.equal(readApiToken(path.join(dir, 'missing')), null);
});
