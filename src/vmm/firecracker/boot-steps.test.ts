import assert from 'node:assert/strict';
import { test } from 'node:test';
import { FirecrackerDriver } from './firecracker-driver.ts';
import type { FirecrackerVmSpec } from './spec.ts';

const spec = (extra: Partial<FirecrackerVmSpec> = {}): FirecrackerVmSpec => ({
  id: 'vm-1',
  runtimeDir: '/state/vms/vm-1',
  vcpus: 1,
  memoryMib: 128,
  accelerator: 'kvm',
  kernel: { path: '/k', initrd: '/i', cmdline: '' },
  drives: [],
  ...extra,
});
const restore = { snapshotPath: '/s', memBackend: { type: 'File' as const, path: '/m' } };

test('a fresh boot is the documented sequence of named steps (logger and metrics are on the command line)', () => {
  assert.deepEqual(new FirecrackerDriver().bootSteps(spec()).names, [
    'fc.prepare',
    'fc.kernel',
    'fc.pathView',
    'fc.spawn',
    'fc.waitSocket',
    'fc.version',
    'fc.machineConfig',
    'fc.serial',
    'fc.bootSource',
    'fc.drives',
    'fc.networkInterfaces',
    'fc.vsock',
    'fc.entropy',
    'fc.balloon',
    'fc.mmds',
    'fc.instanceStart',
  ]);
});

test('restore edits the same list: nothing but the version check precedes the load', () => {
  assert.deepEqual(new FirecrackerDriver().bootSteps(spec({ restore })).names, [
    'fc.prepare',
    'fc.pathView',
    'fc.spawn',
    'fc.waitSocket',
    'fc.version',
    'fc.snapshotLoad',
    'fc.mmdsData',
    'fc.resume',
  ]);
});

test('jailer and restore compose', () => {
  const d = new FirecrackerDriver({ jailer: { uid: 1, gid: 1 } });
  assert.deepEqual(d.bootSteps(spec({ restore })).names.slice(0, 5), ['fc.prepare', 'jailer.prepare', 'jailer.spawn', 'fc.waitSocket', 'jailer.pid']);
});

test('editSteps has the last word, and a bad edit fails loudly', () => {
  const d = new FirecrackerDriver({ editSteps: (l) => void l.remove('fc.entropy') });
  assert.ok(!d.bootSteps(spec()).names.includes('fc.entropy'), 'removed');
  const bad = new FirecrackerDriver({ editSteps: (l) => void l.insertAfter('fc.noSuchStep', { name: 'x', run: async () => {} }) });
  assert.throws(() => bad.bootSteps(spec()), /fc\.noSuchStep/);
});
