import assert from 'node:assert/strict';
import { test } from 'node:test';
import { parseContainerVolume, parseEnvFlag } from './container-commands.ts';

test('-v: named volumes and host directories, read-only only when asked', () => {
  assert.deepEqual(parseContainerVolume('data:/var/lib/x'), { volume: 'data', target: '/var/lib/x', read_only: false });
  assert.deepEqual(parseContainerVolume('data:/x:ro'), { volume: 'data', target: '/x', read_only: true });
  assert.deepEqual(parseContainerVolume('/srv/site:/usr/share/html:ro'), { host_path: '/srv/site', target: '/usr/share/html', read_only: true });
  // A host directory without :ro asks for writes, which kiln refuses (server-side, with the reason).
  assert.deepEqual(parseContainerVolume('/srv/site:/html'), { host_path: '/srv/site', target: '/html', read_only: false });
  for (const bad of ['data', ':/x', 'data:', 'a:/b:rx', 'a:/b:ro:x']) assert.throws(() => parseContainerVolume(bad), /-v wants/, bad);
});

test('-e: K=V, values with "=", and NAME taken from the caller', () => {
  assert.deepEqual(parseEnvFlag('A=b=c'), ['A', 'b=c']);
  assert.deepEqual(parseEnvFlag('EMPTY='), ['EMPTY', '']);
  process.env.KILN_TEST_PASS = 'through';
  assert.deepEqual(parseEnvFlag('KILN_TEST_PASS'), ['KILN_TEST_PASS', 'through']);
});
