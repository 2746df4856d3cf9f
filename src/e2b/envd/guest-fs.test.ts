import assert from 'node:assert/strict';
import { test } from 'node:test';
import { EventType } from '../gen/filesystem/filesystem_pb.ts';
import { eventType } from './filesystem-service.ts';
import { GuestFsError, parseEntriesForTest, resolvePath } from './guest-fs.ts';

const user = { name: 'user', uid: 1000, gid: 1000, home: '/home/user' };

test('paths: relative ones and ~ are under the user\'s home', () => {
  assert.equal(resolvePath('a/b.txt', user), '/home/user/a/b.txt');
  assert.equal(resolvePath('~', user), '/home/user');
  assert.equal(resolvePath('~/x', user), '/home/user/x');
  assert.equal(resolvePath('/tmp/../etc/x', user), '/etc/x');
  assert.throws(() => resolvePath('', user), GuestFsError);
  assert.throws(() => resolvePath('a\0b', user), GuestFsError);
});

test('find -printf records become envd entries (Go FileMode bits, L for symlinks)', () => {
  const rec = (...f: string[]) => f.join('\0') + '\0';
  const out = Buffer.from(
    rec('f', '11', '644', '-rw-r--r--', 'user', 'user', '1700000000.5000000000', '', '/home/user/a.txt')
    + rec('d', '4096', '755', 'drwxr-xr-x', 'root', 'root', '1700000001.0', '', '/home/user/dir')
    + rec('l', '5', '777', 'lrwxrwxrwx', 'user', 'user', '1700000002.0', '/etc/hosts', '/home/user/link'),
  );
  const [f, dir, link] = parseEntriesForTest(out);
  assert.deepEqual(f, { name: 'a.txt', type: 'file', path: '/home/user/a.txt', size: 11, mode: 0o644, permissions: '-rw-r--r--', owner: 'user', group: 'user', mtimeMs: 1700000000500 });
  assert.equal(dir!.type, 'dir');
  assert.equal(dir!.mode, 0x80000000 + 0o755);
  assert.equal(link!.type, 'symlink');
  assert.equal(link!.permissions, 'Lrwxrwxrwx');
  assert.equal(link!.symlinkTarget, '/etc/hosts');
  assert.deepEqual(parseEntriesForTest(Buffer.alloc(0)), []);
});

test('inotify event names map to envd\'s event types', () => {
  assert.equal(eventType('CREATE'), EventType.CREATE);
  assert.equal(eventType('CREATE,ISDIR'), EventType.CREATE);
  assert.equal(eventType('MOVED_TO'), EventType.CREATE);
  assert.equal(eventType('MODIFY'), EventType.WRITE);
  assert.equal(eventType('DELETE'), EventType.REMOVE);
  assert.equal(eventType('MOVED_FROM'), EventType.RENAME);
  assert.equal(eventType('ATTRIB'), EventType.CHMOD);
  assert.equal(eventType('OPEN'), null);
});
