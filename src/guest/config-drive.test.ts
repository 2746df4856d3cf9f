import assert from 'node:assert/strict';
import { test } from 'node:test';
import { KilnError } from '../errors.ts';
import { CONFIG_MAGIC, encodeConfigDrive } from './config-drive.ts';

test('encodes NUL-terminated key=value entries after the magic, padded to 4 KiB', () => {
  const buf = encodeConfigDrive({
    argv: ['/bin/sh', '-c', 'echo "a b"'],
    env: { A: '1', B: 'x y' },
    hostname: 'h',
    uid: 1000,
    gid: 1000,
    drives: [{ role: 'root', serial: 'root', index: 0 }],
  });
  assert.equal(buf.length % 4096, 0);
  const text = buf.toString('utf8');
  assert.ok(text.startsWith(CONFIG_MAGIC));
  const entries = text.slice(CONFIG_MAGIC.length).split('\0');
  const end = entries.indexOf('');
  assert.deepEqual(entries.slice(0, end), [
    'argv=/bin/sh', 'argv=-c', 'argv=echo "a b"', 'env=A=1', 'env=B=x y', 'hostname=h', 'uid=1000', 'gid=1000', 'drive=root,root,0',
  ]);
});

test('refuses NUL bytes, empty argv and oversized configs', () => {
  const base = { env: {}, drives: [] };
  assert.throws(() => encodeConfigDrive({ ...base, argv: [] }), (e: KilnError) => e.code === 'KILN_ERR_VALIDATION');
  assert.throws(() => encodeConfigDrive({ ...base, argv: ['a\0b'] }), (e: KilnError) => e.code === 'KILN_ERR_VALIDATION');
  assert.throws(() => encodeConfigDrive({ ...base, argv: ['x'.repeat(2 * 1024 * 1024)] }), (e: KilnError) => e.code === 'KILN_ERR_VALIDATION');
});

test('encodes volume mounts and the agent keys kiln-init reads', () => {
  const buf = encodeConfigDrive({
    argv: ['x'],
    env: {},
    drives: [],
    mounts: [{ serial: 'vol1', index: 3, target: '/data', readOnly: false }],
    agent: { token: 'ab'.repeat(16), host: '10.0.0.1:18081', port: 10240, vsockPort: 52 },
  });
  const entries = buf.toString('utf8').slice(CONFIG_MAGIC.length).split('\0');
  assert.deepEqual(entries.slice(1, entries.indexOf('')), [
    'mount=vol1,3,/data,rw', `agent_token=${'ab'.repeat(16)}`, 'agent_host=10.0.0.1:18081', 'agent_port=10240', 'agent_vsock_port=52',
  ]);
  const base = { argv: ['x'], env: {}, drives: [] };
  assert.throws(() => encodeConfigDrive({ ...base, agent: { token: 'XYZ' } }), (e: KilnError) => e.code === 'KILN_ERR_VALIDATION');
  assert.throws(() => encodeConfigDrive({ ...base, agent: { token: 'ab'.repeat(16), host: 'evil\0' } }), (e: KilnError) => e.code === 'KILN_ERR_VALIDATION');
  assert.throws(() => encodeConfigDrive({ ...base, mounts: [{ serial: 'a', index: 1, target: 'rel', readOnly: true }] }), (e: KilnError) => e.code === 'KILN_ERR_VALIDATION');
});
