import assert from 'node:assert/strict';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
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

async function tmpStore() {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'kiln-store-'));
  return { dir, file: path.join(dir, 'kiln.db') };
}

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

test('names are unique: a clash is KILN_ERR_NAME_CONFLICT', async () => {
  const { dir, file } = await tmpStore();
  const s = new SqliteStore(file);
  await s.insertImage(image);
  await s.insertVm(vm('vm-1', 'same'));
  await assert.rejects(s.insertVm(vm('vm-2', 'same')), (e: KilnError) => e.code === 'KILN_ERR_NAME_CONFLICT');
  await assert.rejects(s.insertImage({ ...image, id: 'img-2' }), (e: KilnError) => e.code === 'KILN_ERR_NAME_CONFLICT');
  await s.close();
  await fs.rm(dir, { recursive: true });
});

test('IP leases are unique, atomic and released with the VM', async () => {
  const { dir, file } = await tmpStore();
  const s = new SqliteStore(file);
  await s.insertImage(image);
  await s.insertVm(vm('vm-1'));
  await s.insertVm(vm('vm-2'));
  const lowest = (taken: ReadonlySet<string>) => ['10.0.0.2', '10.0.0.3'].find((a) => !taken.has(a)) ?? null;
  assert.equal(await s.assignIp('vm-1', lowest), '10.0.0.2');
  assert.equal(await s.assignIp('vm-2', lowest), '10.0.0.3');
  assert.equal((await s.getVm('vm-2'))?.ip, '10.0.0.3');
  await s.insertVm(vm('vm-3'));
  assert.equal(await s.assignIp('vm-3', lowest), null, 'range exhausted');
  await s.deleteVm('vm-1');
  assert.equal(await s.assignIp('vm-3', lowest), '10.0.0.2', 'a deleted VM gives its address back');
  await s.close();
  await fs.rm(dir, { recursive: true });
});

test('a host port is published once: a clash is KILN_ERR_PORT_CONFLICT and inserts nothing', async () => {
  const { dir, file } = await tmpStore();
  const s = new SqliteStore(file);
  await s.insertImage(image);
  await s.insertVm({ ...vm('vm-1'), ports: [{ proto: 'tcp', hostPort: 8080, guestPort: 80 }] });
  await s.insertVm({ ...vm('vm-2'), ports: [{ proto: 'udp', hostPort: 8080, guestPort: 80 }] });
  await assert.rejects(
    s.insertVm({ ...vm('vm-3'), ports: [{ proto: 'tcp', hostPort: 9090, guestPort: 1 }, { proto: 'tcp', hostPort: 8080, guestPort: 80 }] }),
    (e: KilnError) => e.code === 'KILN_ERR_PORT_CONFLICT',
  );
  assert.equal(await s.getVm('vm-3'), null, 'the VM row rolled back with the port');
  await s.insertVm({ ...vm('vm-4'), ports: [{ proto: 'tcp', hostPort: 9090, guestPort: 1 }] });
  await s.deleteVm('vm-1');
  await s.insertVm({ ...vm('vm-5'), ports: [{ proto: 'tcp', hostPort: 8080, guestPort: 80 }] });
  await s.close();
  await fs.rm(dir, { recursive: true });
});

test('events get increasing sequence numbers and filter by VM and cursor', async () => {
  const { dir, file } = await tmpStore();
  const s = new SqliteStore(file);
  const a = await s.appendEvent({ ts: 1, type: 'vm.created', vmId: 'vm-1', data: {} });
  const b = await s.appendEvent({ ts: 2, type: 'vm.created', vmId: 'vm-2', data: { x: 1 } });
  assert.ok(b.seq > a.seq);
  assert.deepEqual((await s.listEvents({ vmId: 'vm-2' })).map((e) => e.data), [{ x: 1 }]);
  assert.deepEqual((await s.listEvents({ afterSeq: a.seq })).map((e) => e.seq), [b.seq]);
  await s.close();
  await fs.rm(dir, { recursive: true });
});

test('event retention: by age, newest N of one VM, newest N overall', async () => {
  const { dir, file } = await tmpStore();
  const s = new SqliteStore(file);
  for (let i = 0; i < 30; i++) await s.appendEvent({ ts: i, type: 't', vmId: i % 3 === 0 ? null : `vm-${i % 3}`, data: { i } });
  assert.equal(await s.pruneEvents({ beforeTs: 3 }), 3);
  assert.equal(await s.pruneEvents({ vmId: 'vm-1', keepPerVm: 4 }), 9 - 4);
  const vm1 = await s.listEvents({ vmId: 'vm-1' });
  assert.deepEqual(vm1.map((e) => e.data.i), [16, 19, 22, 25].map((x) => x + 3), 'the newest four of vm-1');
  assert.equal((await s.listEvents({ vmId: 'vm-2' })).length, 9, 'other VMs untouched');
  await s.pruneEvents({ keepTotal: 5 });
  assert.deepEqual((await s.listEvents({})).map((e) => e.data.i), [25, 26, 27, 28, 29]);
  assert.equal(await s.pruneEvents({ vmId: 'vm-9', keepPerVm: 1 }), 0);
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

test('pulled image fields, image updates, volumes and VM attachments round-trip', async () => {
  const { dir, file } = await tmpStore();
  const s = new SqliteStore(file);
  await s.insertImage({ ...image, id: 'img-p', name: 'r/x:1', state: 'pulling', path: '', source: 'r/x:1', layers: ['sha256:l1'] });
  const ready = await s.updateImage('img-p', { state: 'ready', path: '/p', manifestDigest: 'sha256:m', builder: 'mksquashfs', format: 'erofs' });
  assert.equal(ready.state, 'ready');
  assert.deepEqual(await s.getImage('r/x:1'), ready);
  assert.deepEqual(ready.layers, ['sha256:l1']);
  await s.insertVolume({ id: 'vol-1', name: 'data', sizeMib: 64, path: '/v', createdAt: 2 });
  await assert.rejects(s.insertVolume({ id: 'vol-2', name: 'data', sizeMib: 64, path: '/v2', createdAt: 2 }), { code: 'KILN_ERR_NAME_CONFLICT' });
  assert.equal((await s.getVolume('data'))?.id, 'vol-1');
  await s.insertImage(image);
  await s.insertVm({ ...vm('vm-v'), volumes: [{ volumeId: 'vol-1', target: '/data', readOnly: false }] });
  assert.deepEqual((await s.getVm('vm-v'))?.volumes, [{ volumeId: 'vol-1', target: '/data', readOnly: false }]);
  await s.deleteVolume('vol-1');
  assert.deepEqual(await s.listVolumes(), []);
  await s.close();
  await fs.rm(dir, { recursive: true, force: true });
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

test('snapshots, templates and clone links: a clone reference goes with the VM row', async () => {
  const { dir, file } = await tmpStore();
  const s = new SqliteStore(file);
  try {
    await s.insertImage(image);
    const meta = { format: 1, memory: 'full' } as unknown as import('../snapshot/meta.ts').SnapshotMeta;
    await s.insertSnapshot({ id: 'snap-1', sourceVmId: 'vm-0', templateId: null, path: '/s/snap-1', meta, sizeBytes: 5, createdAt: 2 });
    assert.deepEqual((await s.getSnapshot('snap-1'))?.meta, meta);
    await s.insertVm(vm('vm-a'));
    await s.insertVm(vm('vm-b'));
    await s.linkClone('vm-a', 'snap-1');
    await s.linkClone('vm-b', 'snap-1');
    assert.deepEqual(await s.listClones('snap-1'), ['vm-a', 'vm-b']);
    assert.equal(await s.snapshotOfVm('vm-a'), 'snap-1');
    await s.deleteVm('vm-a');
    assert.deepEqual(await s.listClones('snap-1'), ['vm-b']);
    await s.insertTemplate({ id: 'tpl-1', imageId: 'img-1', vcpus: 1, memoryMib: 256, key: 'k1', state: 'building', stateReason: null, snapshotId: null, createdAt: 3, updatedAt: 3 });
    await assert.rejects(
      s.insertTemplate({ id: 'tpl-2', imageId: 'img-1', vcpus: 1, memoryMib: 256, key: 'k1', state: 'building', stateReason: null, snapshotId: null, createdAt: 3, updatedAt: 3 }),
      /UNIQUE/,
    );
    const ready = await s.updateTemplate('tpl-1', { state: 'ready', snapshotId: 'snap-1' });
    assert.equal((await s.getTemplateByKey('k1'))?.snapshotId, 'snap-1');
    assert.equal(ready.state, 'ready');
    await s.deleteTemplate('tpl-1');
    await s.deleteSnapshot('snap-1');
    assert.deepEqual(await s.listTemplates(), []);
    assert.deepEqual(await s.listSnapshots(), []);
  } finally {
    await s.close();
    await fs.rm(dir, { recursive: true, force: true });
  }
});
