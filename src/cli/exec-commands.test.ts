import assert from 'node:assert/strict';
import { test } from 'node:test';
import { parseRemote } from './exec-commands.ts';

test('kiln cp: VM:/path is remote, anything else is local', () => {
  assert.deepEqual(parseRemote('web:/etc/hosts'), { vm: 'web', path: '/etc/hosts' });
  assert.deepEqual(parseRemote('vm_01.x:/a:b'), { vm: 'vm_01.x', path: '/a:b' });
  assert.equal(parseRemote('./web:/x'), null);
  assert.equal(parseRemote('/tmp/file'), null);
  assert.equal(parseRemote('web:relative'), null);
  assert.equal(parseRemote('-'), null);
});
