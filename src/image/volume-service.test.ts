import assert from 'node:assert/strict';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { pino } from 'pino';
import { EventBus } from '../events/event-bus.ts';
import { SqliteStore } from '../store/sqlite-store.ts';
import { VolumeService, underAllowedRoot } from './volume-service.ts';

let tmp: string;
let store: SqliteStore;
let svc: VolumeService;
let allowed: string;
before(async () => {
  tmp = await fs.mkdtemp(path.join(os.tmpdir(), 'kiln-vol-'));
  allowed = path.join(tmp, 'allowed');
  await fs.mkdir(path.join(allowed, 'dir'), { recursive: true });
  await fs.writeFile(path.join(allowed, 'file'), 'x');
  await fs.symlink('/etc', path.join(allowed, 'out'));
  store = new SqliteStore(path.join(tmp, 'kiln.db'));
  svc = new VolumeService(store, new EventBus(store, pino({ level: 'silent' })), tmp, [allowed]);
});
after(async () => {
  await store.close();
  await fs.rm(tmp, { recursive: true, force: true });
});

test('underAllowedRoot: the root itself and paths below it, not siblings with the same prefix', () => {
  assert.ok(underAllowedRoot('/srv/data', ['/srv/data']));
  assert.ok(underAllowedRoot('/srv/data/x', ['/srv/data']));
  assert.ok(!underAllowedRoot('/srv/data2', ['/srv/data']));
  assert.ok(!underAllowedRoot('/srv', ['/srv/data']));
});

test('volumes are sparse ext4 files; names are unique', async () => {
  const v = await svc.create('data', 128);
  const st = await fs.stat(v.path);
  assert.equal(st.size, 128 * 1024 * 1024);
  assert.ok(st.blocks * 512 < 16 * 1024 * 1024);
  await assert.rejects(svc.create('data', 16), { code: 'KILN_ERR_NAME_CONFLICT' });
  await svc.delete('data');
  await assert.rejects(fs.stat(v.path), { code: 'ENOENT' });
});

test('attachments: host paths must resolve under an allowed root; targets are checked', async () => {
  const ok = await svc.resolveAttachments([{ host_path: path.join(allowed, 'dir'), target: '/mnt/x/' }]);
  assert.deepEqual(ok, [{ hostPath: path.join(allowed, 'dir'), target: '/mnt/x', readOnly: true }]);
  const refused = [
    [{ host_path: '/etc', target: '/m' }, 'KILN_ERR_PATH_NOT_ALLOWED'],
    [{ host_path: path.join(allowed, 'out'), target: '/m' }, 'KILN_ERR_PATH_NOT_ALLOWED'],
    [{ host_path: path.join(allowed, '..', 'kiln.db'), target: '/m' }, 'KILN_ERR_PATH_NOT_ALLOWED'],
    [{ host_path: path.join(allowed, 'file'), target: '/m' }, 'KILN_ERR_VALIDATION'],
    [{ host_path: path.join(allowed, 'dir'), target: '/m', read_only: false }, 'KILN_ERR_VALIDATION'],
    [{ host_path: path.join(allowed, 'dir'), target: '/' }, 'KILN_ERR_VALIDATION'],
    [{ host_path: path.join(allowed, 'dir'), target: '/a/../b' }, 'KILN_ERR_VALIDATION'],
    [{ volume: 'nope', target: '/m' }, 'KILN_ERR_VOLUME_NOT_FOUND'],
    [{ target: '/m' }, 'KILN_ERR_VALIDATION'],
  ] as const;
  for (const [req, code] of refused) await assert.rejects(svc.resolveAttachments([req]), { code }, JSON.stringify(req));
  await assert.rejects(svc.resolveAttachments([
    { host_path: path.join(allowed, 'dir'), target: '/m' }, { host_path: path.join(allowed, 'dir'), target: '/m' },
  ]), { code: 'KILN_ERR_VALIDATION' });
});
