// The store conformance suite: one set of cases every Store implementation must pass, run on
// SQLite (sqlite-store.conformance.test.ts) and on a real PostgreSQL (test/pg-store.test.ts).
// Each case gets a fresh, empty store from the caller's factory. What is specific to one
// engine (schema version bookkeeping, reopening a file) stays in that engine's own tests.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { KilnError } from '../errors.ts';
import type { SnapshotMeta } from '../snapshot/meta.ts';
import type { FunctionVersion, InvocationRecord } from './function-store.ts';
import { leaseNodeSubnet } from '../cluster/node-subnet.ts';
import type { ImageRecord, NodeCapacity, Store, VmRecord } from './store.ts';

export interface StoreFactory {
  /** A fresh, empty, migrated store; dispose() closes it and removes whatever backs it. */
  open(): Promise<{ store: Store; dispose(): Promise<void> }>;
}

export const image: ImageRecord = {
  id: 'img-1', name: 'default', digest: 'sha256:ab', format: 'squashfs', path: '/x', sizeBytes: 10,
  config: { cmd: ['/bin/sh'], env: {}, workdir: '/', user: '0:0' }, createdAt: 1,
  state: 'ready', source: null, manifestDigest: null, layers: [], builder: null,
};

export const vm = (id: string, name = id): VmRecord => ({
  id, name, state: 'creating', stateReason: null, imageId: 'img-1', vcpus: 1, memoryMib: 256, kernelArgs: ['a=1'],
  cmd: null, env: { K: 'v' }, network: 'bridge', ip: null, ports: [], readiness: 'auto', agentToken: null, agent: null,
  health: 'unknown', healthReason: null, backend: 'qemu', accelerator: 'tcg', pid: null, bootCount: 1, consoleOffset: 0,
  exitCode: null, volumes: [], createdAt: 1, updatedAt: 1,
});

const fnVersion = (name: string, version: number): FunctionVersion => ({
  function: name, version, runtime: 'python', image: null, handler: 'main.handler', vcpus: 1, memoryMib: 128, env: { A: '1' },
  timeoutMs: 1000, minInstances: 0, maxInstances: 2, concurrency: 1, idleTimeoutS: 60, queueSize: 10,
  codeKind: 'inline', codeSha256: `sha-${version}`, codeSize: 12, loadError: null, createdAt: 10 + version,
});

const invocation = (id: string, startedAt: number): InvocationRecord => ({
  id, function: 'hello', version: 1, status: 'running', cold: true, source: 'pool', instance: null, startedAt,
  durationMs: null, guestMs: null, timeline: [], error: null, logs: '',
});

export const capacity = (over: Partial<NodeCapacity> = {}): NodeCapacity => ({
  vcpus: 8, memoryMib: 8192, committedVcpus: 0, committedMemoryMib: 0, vms: 0, diskFreeBytes: 2 ** 34, images: ['img-1'], warm: {}, ...over,
});

const isCode = (code: string) => (e: KilnError) => e.code === code;

export function storeConformance(engine: string, factory: StoreFactory): void {
  /** Registers a case that runs on a fresh store and always disposes of it. */
  const c = (name: string, fn: (s: Store) => Promise<void>) =>
    test(`[${engine}] ${name}`, async () => {
      const { store, dispose } = await factory.open();
      try {
        await fn(store);
      } finally {
        await dispose();
      }
    });

  c('VM labels round-trip, default to none, and a patch replaces only them', async (s) => {
    await s.insertImage(image);
    await s.insertVm(vm('vm-plain'));
    assert.deepEqual((await s.getVm('vm-plain'))?.labels, {}, 'a VM made without labels has none');
    const labels = { 'kiln.kind': 'sandbox', 'e2b.sandbox': 'iabc', 'e2b.meta.userId': 'ü ✓ "quoted"' };
    await s.insertVm({ ...vm('vm-l', 'labelled'), labels, createdAt: 2 });
    assert.deepEqual((await s.getVm('labelled'))?.labels, labels);
    await s.updateVm('vm-l', { state: 'ready' });
    assert.deepEqual((await s.getVm('vm-l'))?.labels, labels, 'an update of other columns keeps them');
    const next = { ...labels, 'e2b.end_at': '2026-01-01T00:00:00.000Z' };
    const updated = await s.updateVm('vm-l', { labels: next });
    assert.deepEqual(updated.labels, next);
    assert.equal(updated.state, 'ready', 'a labels patch writes only the labels');
    assert.deepEqual((await s.listVms()).map((v) => [v.id, v.labels]), [['vm-plain', {}], ['vm-l', next]]);
  });

  c('VMs and images round-trip; phases cascade with their VM', async (s) => {
    await s.insertImage(image);
    await s.insertVm({ ...vm('vm-1', 'one'), cmd: ['/bin/echo', 'hi'], agent: { channel: 'tcp', readiness: 'push', version: '1', latencyMs: 1.5, clockErrorMs: 0.25 } });
    const updated = await s.updateVm('vm-1', { state: 'ready', pid: 42 });
    assert.equal(updated.state, 'ready');
    assert.ok(updated.updatedAt > 1, 'updatedAt moves on every update');
    await s.recordPhase({ vmId: 'vm-1', boot: 1, name: 'vmm.spawn', startedAt: 10, endedAt: 12.5 });
    await s.recordPhase({ vmId: 'vm-1', boot: 1, name: 'guest.init', startedAt: 12.5, endedAt: null });
    await s.recordPhase({ vmId: 'vm-1', boot: 1, name: 'guest.init', startedAt: 12.5, endedAt: 20 });
    const got = await s.getVm('one');
    assert.equal(got?.id, 'vm-1');
    assert.equal(got?.state, 'ready');
    assert.equal(got?.pid, 42);
    assert.deepEqual(got?.kernelArgs, ['a=1']);
    assert.deepEqual(got?.cmd, ['/bin/echo', 'hi']);
    assert.deepEqual(got?.env, { K: 'v' });
    assert.deepEqual(got?.agent, { channel: 'tcp', readiness: 'push', version: '1', latencyMs: 1.5, clockErrorMs: 0.25 });
    assert.deepEqual(await s.getVm('vm-1'), got, 'by id and by name alike');
    assert.deepEqual((await s.listPhases('vm-1', 1)).map((p) => [p.name, p.endedAt]), [['vmm.spawn', 12.5], ['guest.init', 20]]);
    assert.equal(await s.countVmsUsingImage('img-1'), 1);
    assert.deepEqual((await s.listVms()).map((v) => v.id), ['vm-1']);
    await s.deleteVm('vm-1');
    assert.equal(await s.getVm('vm-1'), null);
    assert.deepEqual(await s.listPhases('vm-1', 1), [], 'phases cascade with the VM');
    assert.equal(await s.countVmsUsingImage('img-1'), 0);
    await assert.rejects(s.updateVm('vm-1', { pid: 1 }), isCode('KILN_ERR_VM_NOT_FOUND'));
  });

  c('names are unique: a clash is KILN_ERR_NAME_CONFLICT and stores nothing', async (s) => {
    await s.insertImage(image);
    await s.insertVm(vm('vm-1', 'same'));
    await assert.rejects(s.insertVm(vm('vm-2', 'same')), isCode('KILN_ERR_NAME_CONFLICT'));
    assert.equal(await s.getVm('vm-2'), null);
    await assert.rejects(s.insertImage({ ...image, id: 'img-2' }), isCode('KILN_ERR_NAME_CONFLICT'));
    await s.insertVolume({ id: 'vol-1', name: 'data', sizeMib: 64, path: '/v', createdAt: 2 });
    await assert.rejects(s.insertVolume({ id: 'vol-2', name: 'data', sizeMib: 64, path: '/v2', createdAt: 2 }), isCode('KILN_ERR_NAME_CONFLICT'));
    await s.functions.createFunction(fnVersion('hello', 1));
    await assert.rejects(s.functions.createFunction(fnVersion('hello', 1)), isCode('KILN_ERR_NAME_CONFLICT'));
  });

  c('concurrent inserts of one name: exactly one wins', async (s) => {
    await s.insertImage(image);
    const results = await Promise.allSettled(Array.from({ length: 8 }, (_, i) => s.insertVm(vm(`vm-${i}`, 'contested'))));
    assert.equal(results.filter((r) => r.status === 'fulfilled').length, 1);
    for (const r of results) if (r.status === 'rejected') assert.equal((r.reason as KilnError).code, 'KILN_ERR_NAME_CONFLICT');
    assert.equal((await s.listVms()).length, 1);
  });

  c('IP leases are unique, atomic and released with the VM', async (s) => {
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
  });

  c('concurrent leases never hand out one address twice', async (s) => {
    await s.insertImage(image);
    const ids = Array.from({ length: 12 }, (_, i) => `vm-${i}`);
    for (const id of ids) await s.insertVm(vm(id));
    const pool = Array.from({ length: 20 }, (_, i) => `10.0.1.${i + 2}`);
    const lowest = (taken: ReadonlySet<string>) => pool.find((a) => !taken.has(a)) ?? null;
    const got = await Promise.all(ids.map((id) => s.assignIp(id, lowest)));
    assert.equal(new Set(got).size, ids.length, `distinct addresses: ${got.join(' ')}`);
    assert.deepEqual([...got].sort(), pool.slice(0, ids.length).sort());
  });

  c('a host port is published once: a clash is KILN_ERR_PORT_CONFLICT and inserts nothing', async (s) => {
    await s.insertImage(image);
    await s.insertVm({ ...vm('vm-1'), ports: [{ proto: 'tcp', hostPort: 8080, guestPort: 80 }] });
    await s.insertVm({ ...vm('vm-2'), ports: [{ proto: 'udp', hostPort: 8080, guestPort: 80 }] });
    await assert.rejects(
      s.insertVm({ ...vm('vm-3'), ports: [{ proto: 'tcp', hostPort: 9090, guestPort: 1 }, { proto: 'tcp', hostPort: 8080, guestPort: 80 }] }),
      isCode('KILN_ERR_PORT_CONFLICT'),
    );
    assert.equal(await s.getVm('vm-3'), null, 'the VM row rolled back with the port');
    await s.insertVm({ ...vm('vm-4'), ports: [{ proto: 'tcp', hostPort: 9090, guestPort: 1 }] });
    await s.deleteVm('vm-1');
    await s.insertVm({ ...vm('vm-5'), ports: [{ proto: 'tcp', hostPort: 8080, guestPort: 80 }] });
    assert.deepEqual((await s.getVm('vm-5'))?.ports, [{ proto: 'tcp', hostPort: 8080, guestPort: 80 }]);
  });

  c('updates are column-level: concurrent patches of different fields both survive', async (s) => {
    await s.insertImage(image);
    await s.insertVm(vm('vm-1', 'one'));
    await Promise.all([
      s.updateVm('vm-1', { pid: 7 }),
      s.updateVm('vm-1', { health: 'unhealthy', healthReason: 'silence' }),
      s.updateVm('one', { consoleOffset: 4096 }),
      s.updateVm('vm-1', { env: { X: 'y' }, exitCode: 3 }),
    ]);
    const got = (await s.getVm('vm-1'))!;
    assert.equal(got.pid, 7);
    assert.equal(got.health, 'unhealthy');
    assert.equal(got.healthReason, 'silence');
    assert.equal(got.consoleOffset, 4096);
    assert.deepEqual(got.env, { X: 'y' });
    assert.equal(got.exitCode, 3);
    assert.equal(got.state, 'creating', 'fields outside every patch keep their value');
    const same = await s.updateVm('vm-1', { pid: undefined, stateReason: null });
    assert.equal(same.pid, 7, 'an undefined field is not part of the patch');
    assert.equal(same.createdAt, 1);
  });

  c('state transitions are compare-and-set: one of many racing transitions wins', async (s) => {
    await s.insertImage(image);
    await s.insertVm(vm('vm-1'));
    assert.equal(await s.transitionVm('vm-1', ['ready'], { state: 'stopping' }), null, 'not in a from-state: nothing written');
    assert.equal((await s.getVm('vm-1'))?.state, 'creating');
    const booting = await s.transitionVm('vm-1', ['creating'], { state: 'booting', pid: 9 });
    assert.equal(booting?.state, 'booting');
    assert.equal(booting?.pid, 9);
    await s.transitionVm('vm-1', ['booting'], { state: 'ready' });
    const racers = await Promise.all(
      Array.from({ length: 10 }, (_, i) => s.transitionVm('vm-1', ['ready'], { state: i % 2 ? 'stopping' : 'paused', stateReason: `racer ${i}` })),
    );
    const winners = racers.filter((r) => r !== null);
    assert.equal(winners.length, 1, 'exactly one transition out of ready');
    const final = (await s.getVm('vm-1'))!;
    assert.equal(final.state, winners[0]!.state);
    assert.equal(final.stateReason, winners[0]!.stateReason);
    assert.equal(await s.transitionVm('vm-gone', ['creating'], { state: 'failed' }), null, 'an unknown VM is not an error: nothing matched');
  });

  c('events get increasing sequence numbers and filter by VM and cursor', async (s) => {
    assert.equal(await s.firstEventSeq(), null);
    assert.equal(await s.lastEventSeq(), null);
    const a = await s.appendEvent({ ts: 1, type: 'vm.created', vmId: 'vm-1', data: {} });
    const b = await s.appendEvent({ ts: 2, type: 'vm.created', vmId: 'vm-2', data: { x: 1, nested: { y: [1, 2] } } });
    assert.ok(b.seq > a.seq);
    assert.equal(await s.firstEventSeq(), a.seq);
    assert.equal(await s.lastEventSeq(), b.seq);
    assert.deepEqual((await s.listEvents({ vmId: 'vm-2' })).map((e) => e.data), [{ x: 1, nested: { y: [1, 2] } }]);
    assert.deepEqual((await s.listEvents({ afterSeq: a.seq })).map((e) => e.seq), [b.seq]);
    assert.deepEqual((await s.listEvents({ limit: 1 })).map((e) => e.seq), [a.seq]);
    const burst = await Promise.all(Array.from({ length: 20 }, (_, i) => s.appendEvent({ ts: 3 + i, type: 't', vmId: null, data: { i } })));
    assert.equal(new Set(burst.map((e) => e.seq)).size, 20, 'concurrent appends get distinct sequence numbers');
    const listed = (await s.listEvents({ afterSeq: b.seq })).map((e) => e.seq);
    assert.deepEqual(listed, [...listed].sort((x, y) => x - y), 'oldest first');
    assert.equal(listed.length, 20);
  });

  c('event retention: by age, newest N of one VM, newest N overall', async (s) => {
    for (let i = 0; i < 30; i++) await s.appendEvent({ ts: i, type: 't', vmId: i % 3 === 0 ? null : `vm-${i % 3}`, data: { i } });
    assert.equal(await s.pruneEvents({ beforeTs: 3 }), 3);
    assert.equal(await s.pruneEvents({ vmId: 'vm-1', keepPerVm: 4 }), 9 - 4);
    const vm1 = await s.listEvents({ vmId: 'vm-1' });
    assert.deepEqual(vm1.map((e) => e.data.i), [19, 22, 25, 28], 'the newest four of vm-1');
    assert.equal((await s.listEvents({ vmId: 'vm-2' })).length, 9, 'other VMs untouched');
    await s.pruneEvents({ keepTotal: 5 });
    assert.deepEqual((await s.listEvents({})).map((e) => e.data.i), [25, 26, 27, 28, 29]);
    assert.equal(await s.pruneEvents({ vmId: 'vm-9', keepPerVm: 1 }), 0);
  });

  c('pulled image fields, image updates, volumes and VM attachments round-trip', async (s) => {
    await s.insertImage({ ...image, id: 'img-p', name: 'r/x:1', state: 'pulling', path: '', source: 'r/x:1', layers: ['sha256:l1'], sizeBytes: 5 * 2 ** 32 });
    const ready = await s.updateImage('img-p', { state: 'ready', path: '/p', manifestDigest: 'sha256:m', builder: 'mksquashfs', format: 'erofs' });
    assert.equal(ready.state, 'ready');
    assert.equal(ready.sizeBytes, 5 * 2 ** 32, 'sizes beyond 32 bits');
    assert.deepEqual(await s.getImage('r/x:1'), ready);
    assert.deepEqual(ready.layers, ['sha256:l1']);
    assert.equal((await s.getImageByDigest('sha256:ab'))?.id, 'img-p');
    await assert.rejects(s.updateImage('img-none', { path: '/q' }), isCode('KILN_ERR_IMAGE_NOT_FOUND'));
    await s.insertVolume({ id: 'vol-1', name: 'data', sizeMib: 64, path: '/v', createdAt: 2 });
    assert.equal((await s.getVolume('data'))?.id, 'vol-1');
    assert.equal((await s.getVolume('vol-1'))?.name, 'data');
    await s.insertImage(image);
    await s.insertVm({ ...vm('vm-v'), volumes: [{ volumeId: 'vol-1', target: '/data', readOnly: false }] });
    assert.deepEqual((await s.getVm('vm-v'))?.volumes, [{ volumeId: 'vol-1', target: '/data', readOnly: false }]);
    await s.deleteVolume('vol-1');
    assert.deepEqual(await s.listVolumes(), []);
    await s.deleteVm('vm-v');
    await s.deleteImage('img-p');
    assert.deepEqual((await s.listImages()).map((i) => i.id), ['img-1']);
  });

  c('image copies: one row per (image, node), replaced in place, listed by image or node, gone with the image', async (s) => {
    await s.insertImage(image);
    await s.insertImage({ ...image, id: 'img-2', name: 'other', digest: 'sha256:cd' });
    const copy = { imageId: 'img-1', nodeId: 'node-a', path: '/a/images/img-1/rootfs.squashfs', sizeBytes: 5 * 2 ** 32, sha256: 'sha256:f1', state: 'ready' as const, updatedAt: 10 };
    await s.putImageCopy(copy);
    await s.putImageCopy({ ...copy, nodeId: 'node-b', path: '/b/x', state: 'fetching', updatedAt: 11 });
    await s.putImageCopy({ ...copy, imageId: 'img-2', updatedAt: 12 });
    assert.deepEqual(await s.listImageCopies({ imageId: 'img-1' }), [copy, { ...copy, nodeId: 'node-b', path: '/b/x', state: 'fetching', updatedAt: 11 }]);
    // A node's fetch finishing replaces its row (an upsert, not a second row).
    await s.putImageCopy({ ...copy, nodeId: 'node-b', path: '/b/y', state: 'ready', updatedAt: 13 });
    assert.deepEqual((await s.listImageCopies({ nodeId: 'node-b' })).map((c) => [c.imageId, c.path, c.state]), [['img-1', '/b/y', 'ready']]);
    assert.deepEqual((await s.listImageCopies({ imageId: 'img-1', nodeId: 'node-a' })), [copy], 'sizes beyond 32 bits');
    assert.equal((await s.listImageCopies({})).length, 3);
    await s.deleteImageCopy('img-2', 'node-a');
    assert.deepEqual(await s.listImageCopies({ imageId: 'img-2' }), []);
    await s.deleteImage('img-1');
    assert.deepEqual(await s.listImageCopies({}), [], "an image's copies go with it");
  });

  c('containers: a row per container VM, column-level restart state, removed with its VM', async (s) => {
    await s.insertImage(image);
    await s.insertVm({ ...vm('vm-c', 'web'), process: { entrypoint: ['/bin/echo'], user: 'app', stdio: 'tagged' } });
    await s.insertContainer({
      id: 'vm-c', image: 'reg/app:v1', restart: { name: 'on-failure', maxRetries: 3 }, autoRemove: true,
      restartCount: 0, backoffStep: 0, userStopped: false, handledBoot: 0, restartAt: null, createdAt: 1,
    });
    await Promise.all([s.updateContainer('vm-c', { restartCount: 2, backoffStep: 2 }), s.updateContainer('vm-c', { handledBoot: 3, restartAt: 1234.5 })]);
    const c = await s.getContainer('vm-c');
    assert.deepEqual(c?.restart, { name: 'on-failure', maxRetries: 3 });
    assert.equal(c?.restartCount, 2);
    assert.equal(c?.backoffStep, 2);
    assert.equal(c?.handledBoot, 3);
    assert.equal(c?.restartAt, 1234.5);
    assert.equal(c?.autoRemove, true);
    assert.equal(c?.userStopped, false);
    assert.equal((await s.updateContainer('vm-c', { userStopped: true })).userStopped, true);
    assert.deepEqual((await s.getVm('web'))?.process, { entrypoint: ['/bin/echo'], user: 'app', stdio: 'tagged' });
    assert.equal((await s.listContainers()).length, 1);
    await s.deleteVm('vm-c');
    assert.equal(await s.getContainer('vm-c'), null);
    await assert.rejects(s.updateContainer('vm-c', { restartCount: 1 }), isCode('KILN_ERR_CONTAINER_NOT_FOUND'));
  });

  c('snapshots, templates and clone links: a clone reference goes with the VM row', async (s) => {
    await s.insertImage(image);
    const meta = { format: 1, memory: 'full', guest: { env: { A: 'b' } } } as unknown as SnapshotMeta;
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
    const tpl = { id: 'tpl-1', imageId: 'img-1', vcpus: 1, memoryMib: 256, key: 'k1', state: 'building' as const, stateReason: null, snapshotId: null, createdAt: 3, updatedAt: 3 };
    await s.insertTemplate(tpl);
    await assert.rejects(s.insertTemplate({ ...tpl, id: 'tpl-2' }), isCode('KILN_ERR_NAME_CONFLICT'));
    const ready = await s.updateTemplate('tpl-1', { state: 'ready', snapshotId: 'snap-1' });
    assert.equal(ready.state, 'ready');
    assert.ok(ready.updatedAt > 3);
    assert.equal((await s.getTemplateByKey('k1'))?.snapshotId, 'snap-1');
    assert.equal((await s.getTemplate('tpl-1'))?.vcpus, 1);
    await assert.rejects(s.updateTemplate('tpl-9', { state: 'failed' }), isCode('KILN_ERR_TEMPLATE_NOT_FOUND'));
    await s.deleteTemplate('tpl-1');
    await s.deleteSnapshot('snap-1');
    assert.deepEqual(await s.listTemplates(), []);
    assert.deepEqual(await s.listSnapshots(), []);
  });

  c('functions: versions, load errors, invocations and their retention', async (s) => {
    const f = s.functions;
    await f.createFunction(fnVersion('hello', 1));
    await f.addVersion({ ...fnVersion('hello', 2), env: { B: '2' } });
    assert.equal((await f.getFunction('hello'))?.version, 2);
    assert.equal((await f.getVersion('hello', 1))?.codeSha256, 'sha-1');
    assert.deepEqual((await f.getVersion('hello', 2))?.env, { B: '2' });
    assert.equal(await f.getVersion('hello', 3), null);
    const err = { type: 'SyntaxError', message: 'bad', stack: null };
    await f.setLoadError('hello', 2, err);
    assert.deepEqual((await f.getVersion('hello', 2))?.loadError, err);
    for (let i = 0; i < 5; i++) await f.upsertInvocation(invocation(`inv-${i}`, 100 + i));
    await f.upsertInvocation({ ...invocation('inv-4', 104), status: 'ok', cold: false, durationMs: 12.5, timeline: [{ phase: 'run', ms: 3 }], logs: 'out\n' });
    const listed = await f.listInvocations('hello', 3);
    assert.deepEqual(listed.map((i) => i.id), ['inv-4', 'inv-3', 'inv-2'], 'newest first, at most the limit');
    assert.equal(listed[0]!.status, 'ok');
    assert.equal(listed[0]!.cold, false);
    assert.equal(listed[1]!.cold, true);
    assert.deepEqual(listed[0]!.timeline, [{ phase: 'run', ms: 3 }]);
    await f.pruneInvocations('hello', 2);
    assert.deepEqual((await f.listInvocations('hello', 10)).map((i) => i.id), ['inv-4', 'inv-3']);
    assert.deepEqual((await f.listFunctions()).map((x) => x.name), ['hello']);
    await f.deleteFunction('hello');
    assert.equal(await f.getFunction('hello'), null);
    assert.equal(await f.getVersion('hello', 1), null, 'versions go with their function');
    assert.deepEqual(await f.listInvocations('hello', 10), [], 'invocations go with their function');
  });

  c('function code bytes: stored with their version, read back exactly, gone with the function', async (s) => {
    const f = s.functions;
    const one = Buffer.from([0, 1, 2, 255, 0x50, 0x4b]);
    const two = Buffer.from('def handler(e, c):\n    return 2\n');
    await f.createFunction(fnVersion('coded', 1), one);
    await f.addVersion(fnVersion('coded', 2), two);
    await f.addVersion(fnVersion('coded', 3));
    assert.deepEqual(await f.getCode('coded', 1), one);
    assert.deepEqual(await f.getCode('coded', 2), two);
    assert.equal(await f.getCode('coded', 3), null, 'a version deployed without code in the store');
    await assert.rejects(f.createFunction(fnVersion('coded', 1), two), isCode('KILN_ERR_NAME_CONFLICT'));
    assert.deepEqual(await f.getCode('coded', 1), one, 'a refused create stores nothing');
    await f.deleteFunction('coded');
    assert.equal(await f.getCode('coded', 1), null);
    await f.createFunction(fnVersion('coded', 1), two);
    assert.deepEqual(await f.getCode('coded', 1), two, 'a new function of the same name has its own code');
  });

  c('nodes: register, compare-and-set heartbeats, the lost sweep takes their live VMs, re-registration', async (s) => {
    await s.insertImage(image);
    const a = await s.registerNode({ id: 'node-a', name: 'a', url: 'http://10.0.0.1:18080', capacity: capacity() }, 1000);
    assert.equal(a.state, 'ready');
    assert.equal(a.incarnation, 1);
    await s.registerNode({ id: 'node-b', name: 'b', url: 'http://10.0.0.2:18080', capacity: capacity({ vcpus: 4 }) }, 1000);
    await assert.rejects(s.registerNode({ id: 'node-c', name: 'a', url: 'http://x', capacity: capacity() }, 1000), isCode('KILN_ERR_NAME_CONFLICT'));
    for (const [id, node, state] of [['v1', 'node-a', 'ready'], ['v2', 'node-a', 'stopped'], ['v3', 'node-b', 'ready'], ['v4', 'node-a', 'booting'], ['v5', null, 'ready']] as const) {
      await s.insertVm({ ...vm(id), nodeId: node, state });
    }
    assert.equal((await s.getVm('v1'))?.nodeId, 'node-a');
    assert.equal((await s.getVm('v5'))?.nodeId, null);
    const beat = await s.heartbeatNode('node-b', 1, capacity({ vcpus: 4, committedVcpus: 2, vms: 1, warm: { 'python/1x128': 2 } }), 5000);
    assert.deepEqual(beat?.capacity.warm, { 'python/1x128': 2 });
    assert.equal(beat?.heartbeatAt, 5000);
    assert.equal(await s.heartbeatNode('node-b', 7, capacity(), 5000), null, 'a stale incarnation is refused');
    // Image work under way: a's pull and b's pull (each marked by its node's fetching row), a's
    // interrupted fetch of a ready image, and a's finished copy of it.
    const pulling = (id: string): ImageRecord => ({ ...image, id, name: `reg.example/${id}:1`, digest: '', state: 'pulling', source: `reg.example/${id}:1` });
    const mark = (imageId: string, nodeId: string, state: 'fetching' | 'ready') =>
      s.putImageCopy({ imageId, nodeId, path: state === 'ready' ? `/${nodeId}/${imageId}` : '', sizeBytes: 0, sha256: '', state, updatedAt: 1 });
    await s.insertImage(pulling('img-pull-a'));
    await mark('img-pull-a', 'node-a', 'fetching');
    await s.insertImage(pulling('img-pull-b'));
    await mark('img-pull-b', 'node-b', 'fetching');
    await s.insertImage({ ...image, id: 'img-fetched', name: 'fetched', digest: 'sha256:fe' });
    await mark('img-fetched', 'node-a', 'fetching');
    await mark('img-1', 'node-a', 'ready');
    assert.deepEqual(await s.markNodesLost(3000, 6000), [{ node: 'node-a', vms: ['v1', 'v4'], pulls: ['img-pull-a'] }], 'only the silent node, only its live VMs, its pulls under way');
    assert.equal(await s.getImage('img-pull-a'), null, "the lost node's pull is dropped: nothing will finish it");
    assert.equal((await s.getImage('img-pull-b'))?.state, 'pulling', "another node's pull goes on");
    assert.deepEqual(await s.listImageCopies({ nodeId: 'node-a' }), [{ imageId: 'img-1', nodeId: 'node-a', path: '/node-a/img-1', sizeBytes: 0, sha256: '', state: 'ready', updatedAt: 1 }],
      "its interrupted fetch is gone, its finished copy stays (its files are on its disk)");
    assert.equal((await s.getImage('img-fetched'))?.state, 'ready', 'an image it was fetching stays in the catalogue');
    assert.deepEqual(await s.markNodesLost(3000, 6001), [], 'a lost node is marked once');
    const lostA = (await s.getNode('node-a'))!;
    assert.equal(lostA.state, 'lost');
    assert.equal(lostA.lostAt, 6000);
    assert.equal((await s.getVm('v1'))?.state, 'lost');
    assert.match((await s.getVm('v1'))?.stateReason ?? '', /node-a/);
    assert.equal((await s.getVm('v2'))?.state, 'stopped', 'a stopped VM stays stopped');
    assert.equal((await s.getVm('v3'))?.state, 'ready', "another node's VM is untouched");
    assert.equal(await s.heartbeatNode('node-a', 1, capacity(), 7000), null, 'a lost node cannot heartbeat its way back');
    const back = await s.registerNode({ id: 'node-a', name: 'a', url: 'http://10.0.0.1:18080', capacity: capacity() }, 8000);
    assert.equal(back.state, 'ready');
    assert.equal(back.incarnation, 2);
    assert.equal(back.lostAt, null);
    assert.ok(await s.heartbeatNode('node-a', 2, capacity(), 9000));
    assert.deepEqual((await s.listNodes()).map((n) => [n.name, n.state]), [['a', 'ready'], ['b', 'ready']]);
    await s.deleteNode('node-b');
    assert.equal(await s.getNode('node-b'), null);
  });

  c('nodes with committed resources: the sum of each node\'s VM rows in the asked states, in one query', async (s) => {
    for (const [id, name] of [['node-a', 'a'], ['node-b', 'b'], ['node-c', 'c']]) {
      await s.registerNode({ id: id!, name: name!, url: `http://${name}:18080`, capacity: capacity({ committedVcpus: 1 }) }, 1000);
    }
    await s.insertImage(image);
    const rows: [string, string | null, VmRecord['state'], number, number][] = [
      ['v1', 'node-a', 'ready', 2, 512], ['v2', 'node-a', 'booting', 1, 256], ['v3', 'node-a', 'stopped', 4, 4096],
      ['v4', 'node-a', 'lost', 4, 4096], ['v5', 'node-b', 'creating', 3, 128], ['v6', null, 'ready', 8, 8192],
    ];
    for (const [id, nodeId, state, vcpus, memoryMib] of rows) await s.insertVm({ ...vm(id), nodeId, state, vcpus, memoryMib });
    const got = await s.listNodesWithCommitted(['creating', 'booting', 'ready', 'paused', 'stopping']);
    assert.deepEqual(got.map((r) => [r.node.name, r.committed.vcpus, r.committed.memoryMib]), [['a', 3, 768], ['b', 3, 128], ['c', 0, 0]], 'stopped, lost and node-less VMs do not count; a node without VMs has none');
    assert.equal(got[0]!.node.capacity.committedVcpus, 1, 'the node record is as listNodes returns it (its heartbeat\'s own figure)');
    assert.deepEqual(got.map((r) => r.node), await s.listNodes());
    assert.deepEqual((await s.listNodesWithCommitted(['stopped'])).map((r) => r.committed.vcpus), [4, 0, 0]);
    assert.deepEqual((await s.listNodesWithCommitted([])).map((r) => r.committed.vcpus), [0, 0, 0]);
  });

  c('nodes: the E2B listener a node advertises is kept with its row, replaced by each registration', async (s) => {
    const a = await s.registerNode({ id: 'node-e', name: 'e', url: 'http://10.0.0.5:18080', e2bUrl: 'http://10.0.0.5:3000', capacity: capacity() }, 1000);
    assert.equal(a.e2bUrl, 'http://10.0.0.5:3000');
    const b = await s.registerNode({ id: 'node-f', name: 'f', url: 'http://10.0.0.6:18080', capacity: capacity() }, 1000);
    assert.equal(b.e2bUrl, null, 'a node without an E2B listener advertises none');
    const beat = await s.heartbeatNode('node-e', 1, capacity({ vms: 2 }), 2000);
    assert.equal(beat?.e2bUrl, 'http://10.0.0.5:3000', 'a heartbeat keeps it');
    assert.equal((await s.getNode('node-e'))?.e2bUrl, 'http://10.0.0.5:3000');
    const again = await s.registerNode({ id: 'node-e', name: 'e', url: 'http://10.0.0.5:18080', e2bUrl: null, capacity: capacity() }, 3000);
    assert.equal(again.e2bUrl, null, 'restarted without --e2b-listen: no longer advertised');
    assert.deepEqual((await s.listNodes()).map((n) => [n.name, n.e2bUrl]), [['e', null], ['f', null]]);
  });

  c('volumes, snapshots and templates record the node holding their files; a template update keeps it', async (s) => {
    await s.insertImage(image);
    await s.insertVolume({ id: 'vol-a', name: 'on-a', sizeMib: 64, path: '/a/v', createdAt: 1, nodeId: 'node-a' });
    await s.insertVolume({ id: 'vol-x', name: 'single', sizeMib: 64, path: '/x/v', createdAt: 2 });
    assert.equal((await s.getVolume('on-a'))?.nodeId, 'node-a');
    assert.equal((await s.getVolume('vol-x'))?.nodeId, null, 'a single host leaves it empty');
    assert.deepEqual((await s.listVolumes()).map((v) => v.nodeId), ['node-a', null]);
    const meta = { format: 1, memory: 'full', guest: { env: {} } } as unknown as SnapshotMeta;
    await s.insertSnapshot({ id: 'snap-b', sourceVmId: null, templateId: null, path: '/b/s', meta, sizeBytes: 1, createdAt: 3, nodeId: 'node-b' });
    await s.insertSnapshot({ id: 'snap-x', sourceVmId: null, templateId: null, path: '/x/s', meta, sizeBytes: 1, createdAt: 4 });
    assert.equal((await s.getSnapshot('snap-b'))?.nodeId, 'node-b');
    assert.deepEqual((await s.listSnapshots()).map((x) => x.nodeId), ['node-b', null]);
    const tpl = { id: 'tpl-c', imageId: 'img-1', vcpus: 1, memoryMib: 256, key: 'kc', state: 'building' as const, stateReason: null, snapshotId: null, createdAt: 5, updatedAt: 5, nodeId: 'node-c' };
    await s.insertTemplate(tpl);
    assert.equal((await s.updateTemplate('tpl-c', { state: 'ready', snapshotId: 'snap-b' })).nodeId, 'node-c', 'a patch without the node keeps it');
    assert.equal((await s.getTemplateByKey('kc'))?.nodeId, 'node-c');
    assert.deepEqual((await s.listTemplates()).map((t) => t.nodeId), ['node-c']);
  });

  c('node subnets: racing nodes lease different ones, a lease is kept until the node is removed, a full range is refused', async (s) => {
    // Eight nodes at once for the four /26s of a /24: four get one each, four are refused.
    const range = '10.200.0.0/24';
    const ids = Array.from({ length: 8 }, (_, i) => `node-${i}`);
    const got = await Promise.allSettled(ids.map((id) => leaseNodeSubnet(s, id, range, 26)));
    const leased = got.flatMap((r) => (r.status === 'fulfilled' ? [r.value] : []));
    assert.deepEqual([...leased].sort(), ['10.200.0.0/26', '10.200.0.128/26', '10.200.0.192/26', '10.200.0.64/26'], 'four different subnets');
    for (const r of got) {
      if (r.status === 'rejected') assert.equal((r.reason as KilnError).code, 'KILN_ERR_CLUSTER_RANGE_FULL');
    }
    const holder = ids[got.findIndex((r) => r.status === 'fulfilled')]!;
    const held = (got.find((r) => r.status === 'fulfilled') as PromiseFulfilledResult<string>).value;
    assert.equal(await leaseNodeSubnet(s, holder, range, 26), held, 'a restarted node keeps its subnet');
    const refused = ids[got.findIndex((r) => r.status === 'rejected')]!;
    await assert.rejects(leaseNodeSubnet(s, refused, range, 26), isCode('KILN_ERR_CLUSTER_RANGE_FULL'));
    await s.registerNode({ id: holder, name: 'holder', url: 'http://x', capacity: capacity() }, 1000);
    await s.deleteNode(holder);
    assert.equal(await leaseNodeSubnet(s, refused, range, 26), held, "a removed node's subnet is free again");
    assert.equal(await leaseNodeSubnet(s, 'node-x', '10.201.0.0/16', 24), '10.201.0.0/24', 'other ranges are independent');
  });
}
