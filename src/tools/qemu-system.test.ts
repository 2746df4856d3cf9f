import assert from 'node:assert/strict';
import { test } from 'node:test';
import { QEMU_BINARY, qemuArgv } from './qemu-system.ts';

test('QEMU runs directly, or exec\'d in place by nsenter inside a network namespace (same pid either way)', () => {
  assert.deepEqual(qemuArgv(['-S'], {}), [QEMU_BINARY, '-S']);
  assert.deepEqual(qemuArgv(['-S'], { netns: 'ns1' }), ['nsenter', '--net=/run/netns/ns1', '--', QEMU_BINARY, '-S']);
});
