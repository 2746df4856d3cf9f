import assert from 'node:assert/strict';
import { test } from 'node:test';
import { keysFromFile } from './vm-commands.ts';
import { splitAtDetach } from './console-command.ts';

test('Ctrl-] detaches; what was typed before it in the same read is still sent', () => {
  assert.deepEqual(splitAtDetach(Buffer.from('ls\r')), { send: Buffer.from('ls\r'), detach: false });
  assert.deepEqual(splitAtDetach(Buffer.from('ab\x1dcd')), { send: Buffer.from('ab'), detach: true });
  assert.deepEqual(splitAtDetach(Buffer.from([0x1d])), { send: Buffer.alloc(0), detach: true });
  // Ctrl-C goes to the guest.
  assert.deepEqual(splitAtDetach(Buffer.from([0x03])), { send: Buffer.from([0x03]), detach: false });
});

test('--ssh-key files: one key per line, blank lines and comments skipped', () => {
  assert.deepEqual(keysFromFile('# mine\nssh-ed25519 AAAA a@b\r\n\n  ssh-rsa BBBB  \n'), ['ssh-ed25519 AAAA a@b', 'ssh-rsa BBBB']);
});
