import assert from 'node:assert/strict';
import fs from 'node:fs/promises';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { isKilnError } from '../../errors.ts';
import { decideJailer, jailerSettingsFromEnv } from './jailer-default.ts';
import { tempDir } from './testing/harness.ts';

let dir: string;
before(async () => {
  dir = await tempDir('jdef');
});
after(() => fs.rm(dir, { recursive: true, force: true }));

const settings = (env: NodeJS.ProcessEnv = {}) => jailerSettingsFromEnv(env, '/var/lib/kiln');
const none = async () => null;
const v2 = async () => 2 as const;

test('on by default when a jailer sits beside the (symlinked) firecracker binary', async () => {
  const rel = path.join(dir, 'release');
  await fs.mkdir(rel, { recursive: true });
  for (const b of ['firecracker-v1.13.1-x86_64', 'jailer']) await fs.writeFile(path.join(rel, b), '#!/bin/sh\n', { mode: 0o755 });
  const link = path.join(dir, 'firecracker');
  await fs.symlink(path.join(rel, 'firecracker-v1.13.1-x86_64'), link);
  const d = await decideJailer(settings(), link, { find: none, cgroupVersion: v2 });
  assert.deepEqual(d.jailer, { binary: path.join(rel, 'jailer'), uid: 65534, gid: 65534, chrootBaseDir: '/var/lib/kiln/jailer', cgroupVersion: 2 });
  assert.match(d.reason, /runs as uid 65534:65534/);
});

test('on PATH otherwise; absent: unjailed with the reason; off and on as configured', async () => {
  const onPath = await decideJailer(settings(), '/nowhere/firecracker', { find: async (n) => (n === 'jailer' ? '/usr/bin/jailer' : null), cgroupVersion: v2 });
  assert.equal(onPath.jailer?.binary, '/usr/bin/jailer');
  const absent = await decideJailer(settings(), '/nowhere/firecracker', { find: none });
  assert.equal(absent.jailer, undefined);
  assert.match(absent.reason, /no jailer binary beside firecracker or on PATH/);
  const off = await decideJailer(settings({ KILN_FIRECRACKER_JAILER: 'off' }), '/nowhere/firecracker', { find: async () => '/usr/bin/jailer' });
  assert.equal(off.jailer, undefined);
  assert.match(off.reason, /off by configuration/);
  await assert.rejects(decideJailer(settings({ KILN_FIRECRACKER_JAILER: 'on' }), '/nowhere/firecracker', { find: none }), (e) => isKilnError(e) && e.code === 'KILN_ERR_HOST_SETUP');
  const custom = await decideJailer(settings({ KILN_FIRECRACKER_JAIL_UID: '990', KILN_FIRECRACKER_JAIL_GID: '991' }), '/x/firecracker', { find: async () => '/usr/bin/jailer', cgroupVersion: async () => 1 });
  assert.deepEqual([custom.jailer?.uid, custom.jailer?.gid, custom.jailer?.cgroupVersion], [990, 991, 1]);
  assert.throws(() => settings({ KILN_FIRECRACKER_JAIL_UID: '0' }), /not root/);
  assert.throws(() => settings({ KILN_FIRECRACKER_JAILER: 'maybe' }), /auto, on or off/);
});
