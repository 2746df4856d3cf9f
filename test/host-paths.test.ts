// Host paths against a real kilnd: a server-side image import reads only under the allowed
// roots, symlinks resolved (the swap-after-check cases are in src/image/host-dir.test.ts,
// where the swap can be put exactly in the window).
import assert from 'node:assert/strict';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { buildBusyboxTree } from '../src/image/default-image.ts';
import { BACKEND_SKIP as skip } from './helpers/backend.ts';
import { expectApiError } from './helpers/api-errors.ts';
import { startKilnd, waitForState, type TestDaemon } from './helpers/kilnd.ts';

let d: TestDaemon;
let tmp: string;
let allowed: string;
let outside: string;

before(async () => {
  if (skip) return;
  tmp = await fs.mkdtemp(path.join(os.tmpdir(), 'kiln-hostpaths-'));
  allowed = path.join(tmp, 'allowed');
  outside = path.join(tmp, 'outside');
  for (const [dir, motd] of [[path.join(allowed, 'tree'), 'inside-the-root'], [outside, 'SECRET-outside']] as const) {
    await fs.mkdir(dir, { recursive: true });
    await buildBusyboxTree(dir);
    await fs.writeFile(path.join(dir, 'etc/motd'), `${motd}\n`);
  }
  await fs.symlink(outside, path.join(allowed, 'escape'));
  await fs.symlink(path.join(allowed, 'tree'), path.join(allowed, 'alias'));
  d = await startKilnd({ env: { KILN_ALLOWED_ROOTS: allowed } });
});
after(async () => {
  await d?.dispose();
  if (tmp) await fs.rm(tmp, { recursive: true, force: true });
});

test('import through a symlink out of the allowed root: 403, nothing imported', { skip }, async () => {
  await expectApiError(d.client.importImagePath({ name: 'esc', path: path.join(allowed, 'escape') }), 403, 'KILN_ERR_PATH_NOT_ALLOWED');
  await expectApiError(d.client.importImagePath({ name: 'esc', path: path.join(allowed, 'escape', 'etc') }), 403, 'KILN_ERR_PATH_NOT_ALLOWED');
  await expectApiError(d.client.importImagePath({ name: 'esc', path: path.join(allowed, '..', 'outside') }), 403, 'KILN_ERR_PATH_NOT_ALLOWED');
  assert.ok(!(await d.client.listImages()).some((i) => i.name === 'esc'));
  assert.deepEqual((await fs.readdir(path.join(d.stateDir, 'images'))).filter((f) => f.includes('tmp') || f.startsWith('.')), [], 'no half-built file left');
});

test('import of a directory under the root (also through a symlink staying inside) builds that tree', { skip }, async () => {
  const img = await d.client.importImagePath({ name: 'inside', path: path.join(allowed, 'alias'), cmd: ['/bin/cat', '/etc/motd'] });
  assert.equal(img.state, 'ready');
  const vm = await d.client.createVm({ image: 'inside' });
  assert.equal((await waitForState(d.client, vm.id, ['stopped', 'failed'])).state, 'stopped');
  const log = await d.client.logs(vm.id);
  assert.match(log, /inside-the-root/);
  assert.doesNotMatch(log, /SECRET-outside/);
  await d.client.deleteVm(vm.id);
});
