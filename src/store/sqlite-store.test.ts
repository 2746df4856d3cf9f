// SQLite-only behaviour: the file survives reopening, PRAGMA user_version. What every store must
// do is in the conformance suite (conformance.ts, sqlite-store.conformance.test.ts).
import assert from 'node:assert/strict';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, test } from 'node:test';
import Database from 'better-sqlite3';
import type { KilnError } from '../errors.ts';
import { MIGRATIONS } from './migrations.ts';
import { SqliteStore } from './sqlite-store.ts';
import type { ImageRecord, VmRecord } from './store.ts';

const image: ImageRecord = {
  id: 'img-1', name: 'default', digest: 'sha256:ab', format: 'squashfs', path: '/x', sizeBytes: 10,
  config: { cmd: ['/bin/sh'], env: {}, workdir: '/', user: '0:0' }, createdAt: 1,
  state: 'ready', source: null, manifestDigest: null, layers: [], builder: null,
};
const vm = (id: string, name = id): VmRecord => ({
  id, name, state: 'creating', stateReason: null, imageId: 'img-1', vcpus: 1, memoryMib: 256, kernelArgs: ['a=1'],
  cmd: null, env: { K: 'v' }, network: 'bridge', ip: null, ports: [], readiness: 'auto', agentToken: null, agent: null, health: 'unknown', healthReason: null, backend: 'qemu', accelerator: 'tcg', pid: null, bootCount: 1, consoleOffset: 0,
  exitCode: null, volumes: [], createdAt: 1, updatedAt: 1,
});

const dirs: string[] = [];
async function tmpStore() {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'kiln-store-'));
  dirs.push(dir);
  return { dir, file: path.join(dir, 'kiln.db') };
}
// Every test's dir, also of one that failed before removing its own.
after(async () => {
  for (const d of dirs) await fs.rm(d, { recursive: true, force: true });
});

test('round-trips VMs and images through a real SQLite file, surviving reopen', async () => {
  const { dir, file } = await tmpStore();
  let s = new SqliteStore(file);
  await s.insertImage(image);
  await s.insertVm(vm('vm-1', 'one'));
  await s.updateVm('vm-1', { state: 'ready', pid: 42 });
  await s.recordPhase({ vmId: 'vm-1', boot: 1, name: 'vmm.spawn', startedAt: 10, endedAt: 12.5 });
  await s.close();
  s = new SqliteStore(file);
  const got = await s.getVm('one');
  assert.equal(got?.id, 'vm-1');
  assert.equal(got?.state, 'ready');
  assert.equal(got?.pid, 42);
  assert.deepEqual(got?.kernelArgs, ['a=1']);
  assert.deepEqual(got?.env, { K: 'v' });
  assert.deepEqual((await s.listPhases('vm-1', 1)).map((p) => [p.name, p.endedAt]), [['vmm.spawn', 12.5]]);
  assert.equal(await s.countVmsUsingImage('img-1'), 1);
  await s.deleteVm('vm-1');
  assert.equal(await s.getVm('vm-1'), null);
  assert.deepEqual(await s.listPhases('vm-1', 1), [], 'phases cascade with the VM');
  await s.close();
  await fs.rm(dir, { recursive: true });
});

test('schema is versioned; a database from a newer kiln is refused', async () => {
  const { dir, file } = await tmpStore();
  new SqliteStore(file).close();
  const db = new Database(file);
  assert.equal(db.pragma('user_version', { simple: true }), MIGRATIONS.length);
  db.pragma(`user_version = ${MIGRATIONS.length + 1}`);
  db.close();
  assert.throws(() => new SqliteStore(file), (e: KilnError) => e.code === 'KILN_ERR_HOST_SETUP');
  await fs.rm(dir, { recursive: true });
});

test('containers: a row per container VM, restart state survives reopen, removed with its VM', async () => {
  const { file } = await tmpStore();
  let s = new SqliteStore(file);
  await s.insertImage(image);
  await s.insertVm({ ...vm('vm-c', 'web'), process: { entrypoint: ['/bin/echo'], user: 'app', stdio: 'tagged' } });
  await s.insertContainer({
    id: 'vm-c', image: 'reg/app:v1', restart: { name: 'on-failure', maxRetries: 3 }, autoRemove: false,
    restartCount: 0, backoffStep: 0, userStopped: false, handledBoot: 0, restartAt: null, createdAt: 1,
  });
  await s.updateContainer('vm-c', { restartCount: 2, backoffStep: 2, handledBoot: 3, restartAt: 1234.5 });
  await s.close();
  s = new SqliteStore(file);
  const c = await s.getContainer('vm-c');
  assert.deepEqual(c?.restart, { name: 'on-failure', maxRetries: 3 });
  assert.equal(c?.restartCount, 2);
  assert.equal(c?.handledBoot, 3);
  assert.equal(c?.restartAt, 1234.5);
  assert.equal(c?.userStopped, false);
  assert.deepEqual((await s.getVm('web'))?.process, { entrypoint: ['/bin/echo'], user: 'app', stdio: 'tagged' });
  assert.equal((await s.listContainers()).length, 1);
  await s.deleteVm('vm-c');
  assert.equal(await s.getContainer('vm-c'), null);
  await assert.rejects(s.updateContainer('vm-c', { restartCount: 1 }), { code: 'KILN_ERR_CONTAINER_NOT_FOUND' });
  await s.close();
});
