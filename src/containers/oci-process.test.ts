import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { ImageConfig } from '../store/store.ts';
import { mergeProcess } from './oci-process.ts';

const image: ImageConfig = {
  entrypoint: ['/docker-entrypoint.sh'],
  cmd: ['nginx', '-g', 'daemon off;'],
  env: { PATH: '/usr/bin:/bin', LANG: 'C' },
  workdir: '/srv',
  user: '101:102',
};

test('no overrides: entrypoint + cmd of the image, its env, workdir and numeric user', () => {
  const p = mergeProcess(image, {});
  assert.deepEqual(p.argv, ['/docker-entrypoint.sh', 'nginx', '-g', 'daemon off;']);
  assert.deepEqual(p.env, image.env);
  assert.equal(p.cwd, '/srv');
  assert.deepEqual(p.user, { uid: 101, gid: 102 });
});

test('cmd without entrypoint keeps the image entrypoint and replaces its cmd', () => {
  assert.deepEqual(mergeProcess(image, { cmd: ['sh'] }).argv, ['/docker-entrypoint.sh', 'sh']);
});

test('entrypoint resets the image cmd; with a cmd, the cmd follows it', () => {
  assert.deepEqual(mergeProcess(image, { entrypoint: ['/bin/echo'] }).argv, ['/bin/echo']);
  assert.deepEqual(mergeProcess(image, { entrypoint: ['/bin/echo'], cmd: ['a', 'b'] }).argv, ['/bin/echo', 'a', 'b']);
});

test('an empty entrypoint clears it: only the request cmd runs', () => {
  assert.deepEqual(mergeProcess(image, { entrypoint: [], cmd: ['true'] }).argv, ['true']);
  assert.throws(() => mergeProcess(image, { entrypoint: [] }), { code: 'KILN_ERR_VALIDATION' });
});

test('an image without entrypoint runs its cmd, or the request cmd', () => {
  const plain = { ...image, entrypoint: undefined };
  assert.deepEqual(mergeProcess(plain, {}).argv, ['nginx', '-g', 'daemon off;']);
  assert.deepEqual(mergeProcess(plain, { cmd: ['id'] }).argv, ['id']);
  assert.throws(() => mergeProcess({ ...plain, cmd: [] }, {}), { code: 'KILN_ERR_VALIDATION' });
});

test('env: image first, request overrides by key and adds', () => {
  assert.deepEqual(mergeProcess(image, { env: { LANG: 'C.UTF-8', FOO: 'bar' } }).env, { PATH: '/usr/bin:/bin', LANG: 'C.UTF-8', FOO: 'bar' });
});

test('workdir: request, else image, else /; must be absolute', () => {
  assert.equal(mergeProcess(image, { workdir: '/data' }).cwd, '/data');
  assert.equal(mergeProcess({ ...image, workdir: '' }, {}).cwd, '/');
  assert.throws(() => mergeProcess(image, { workdir: 'rel' }), { code: 'KILN_ERR_VALIDATION' });
});

test('user: a request spec goes to the guest (resolved against the image files), the image user is numeric', () => {
  assert.deepEqual(mergeProcess(image, { user: 'nobody' }).user, { spec: 'nobody' });
  assert.deepEqual(mergeProcess(image, { user: '1000:staff' }).user, { spec: '1000:staff' });
  assert.deepEqual(mergeProcess({ ...image, user: '' }, {}).user, { uid: 0, gid: 0 });
  assert.throws(() => mergeProcess(image, { user: 'a b' }), { code: 'KILN_ERR_VALIDATION' });
  assert.throws(() => mergeProcess(image, { user: 'x:' }), { code: 'KILN_ERR_VALIDATION' });
});
