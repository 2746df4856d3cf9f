// kilnd can die at any time: VMs keep running, the next kilnd re-attaches, and a VM whose
// VMM vanished meanwhile is failed with nothing of it left behind.
import assert from 'node:assert/strict';
import fs from 'node:fs/promises';
import path from 'node:path';
import { after, test } from 'node:test';
import { BACKEND_SKIP as skip } from './helpers/backend.ts';
import { vmmPids, startKilnd, waitForLog, waitForState, type TestDaemon } from './helpers/kilnd.ts';

let d: TestDaemon | undefined;

after(() => d?.dispose());

test('SIGKILLed kilnd re-attaches to running VMs and fails the one whose VMM died', { skip }, async () => {
  d = await startKilnd();
  const stateDir = d.stateDir;
  const [a, b] = await Promise.all([
    d.client.createVm({ name: 'survivor', cmd: ['/bin/sh', '-c', 'i=0; while :; do i=$((i+1)); echo "beat $i"; sleep 0.5; done'] }, { wait: true }),
    d.client.createVm({ name: 'victim' }, { wait: true }),
  ]);
  assert.equal(a.state, 'ready');
  assert.equal(b.state, 'ready');

  await d.kill();
  // Both VMMs outlive the daemon.
  assert.equal((await vmmPids(path.join(stateDir, 'vms', a.id))).length, 1);
  assert.equal((await vmmPids(path.join(stateDir, 'vms', b.id))).length, 1);
  process.kill(b.pid!, 'SIGKILL');

  d = await startKilnd({ stateDir, network: d.network });
  const survivor = await d.client.getVm(a.id);
  assert.equal(survivor.state, 'ready');
  assert.equal(survivor.pid, a.pid);
  const victim = await d.client.getVm(b.id);
  assert.equal(victim.state, 'failed');
  assert.match(victim.state_reason ?? '', /KILN_ERR_VMM_FAILED/);
  await assert.rejects(fs.access(path.join(stateDir, 'vms', b.id)), 'victim runtime dir removed');
  assert.deepEqual(await vmmPids(path.join(stateDir, 'vms', b.id)), []);

  // The survivor is controllable by the new daemon: its console is followed live, and
  // pause/resume/stop work through the re-established QMP connection.
  const beats = await d.client.logs(a.id);
  const n = Math.max(...[...beats.matchAll(/beat (\d+)/g)].map((m) => Number(m[1])));
  await waitForLog(d.client, a.id, new RegExp(`beat ${n + 1}\\b`));
  await d.client.pauseVm(a.id);
  await d.client.resumeVm(a.id);
  const stopped = await d.client.stopVm(a.id);
  assert.equal(stopped.state, 'stopped');
  assert.deepEqual(await vmmPids(path.join(stateDir, 'vms', a.id)), []);
});

test('a VMM that dies under a running kilnd is detected and its resources released', { skip }, async () => {
  assert.ok(d);
  const vm = await d.client.createVm({ name: 'crash' }, { wait: true });
  process.kill(vm.pid!, 'SIGKILL');
  const failed = await waitForState(d.client, vm.id, ['failed'], 5_000);
  assert.match(failed.state_reason ?? '', /KILN_ERR_VMM_FAILED/);
  await assert.rejects(fs.access(path.join(d.stateDir, 'vms', vm.id)));
  await d.client.deleteVm(vm.id);
});
