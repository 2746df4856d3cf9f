// Volumes in real microVMs: a persistent ext4 volume written by one VM is read by the next,
// read-only attachments refuse writes, host directories under an allowed root appear
// read-only in the guest, and the API refuses what it must.
import assert from 'node:assert/strict';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import type { CreateVmBody } from '../src/sdk/client.ts';
import { startKilnd, waitForState, type TestDaemon } from './helpers/kilnd.ts';
import { expectApiError } from './helpers/api-errors.ts';

let d: TestDaemon;
let allowed: string;

before(async () => {
  allowed = await fs.mkdtemp(path.join(os.tmpdir(), 'kiln-allowed-'));
  await fs.mkdir(path.join(allowed, 'share/sub'), { recursive: true });
  await fs.writeFile(path.join(allowed, 'share/sub/hello.txt'), 'from the host\n');
  d = await startKilnd({ env: { KILN_ALLOWED_ROOTS: allowed } });
});

after(async () => {
  await d?.dispose();
  await fs.rm(allowed, { recursive: true, force: true });
});

/** Runs `script` in a VM with `volumes`; returns its console output once it has exited. */
async function runIn(script: string, volumes: CreateVmBody['volumes']): Promise<{ id: string; log: string }> {
  const vm = await d.client.createVm({ cmd: ['/bin/sh', '-c', script], volumes });
  const done = await waitForState(d.client, vm.id, ['stopped', 'failed']);
  const log = await d.client.logs(vm.id);
  if (done.state !== 'stopped') await d.client.deleteVm(vm.id);
  assert.equal(done.state, 'stopped', `${done.state_reason}\n${log}`);
  return { id: vm.id, log };
}

describe('volumes', () => {
  test('a read-write volume persists across VMs; read-only attachments refuse writes', async () => {
    const vol = await d.client.createVolume('data', 64);
    assert.equal(vol.size_mib, 64);
    assert.ok(vol.allocated_bytes < 16 * 1024 * 1024, `sparse: ${vol.allocated_bytes} bytes allocated`);

    const w = await runIn('echo persisted-$((6*7)) > /data/f && sync && echo WROTE', [{ volume: 'data', target: '/data' }]);
    assert.match(w.log, /WROTE/);
    await expectApiError(d.client.deleteVolume('data'), 409, 'KILN_ERR_VOLUME_IN_USE');
    await d.client.deleteVm(w.id);

    const r = await runIn('cat /data/f; if echo x > /data/g 2>/dev/null; then echo WRITE-ALLOWED; else echo WRITE-REFUSED; fi',
      [{ volume: 'data', target: '/data', read_only: true }]);
    assert.match(r.log, /persisted-42/);
    assert.match(r.log, /WRITE-REFUSED/);
    assert.doesNotMatch(r.log, /WRITE-ALLOWED/);
    await d.client.deleteVm(r.id);

    await d.client.deleteVolume('data');
    await expectApiError(d.client.getVolume('data'), 404, 'KILN_ERR_VOLUME_NOT_FOUND');
    assert.deepEqual(await fs.readdir(path.join(d.stateDir, 'volumes')), [], 'the volume file is gone');
  });

  test('a host directory under an allowed root is a read-only drive in the guest', async () => {
    const r = await runIn('cat /mnt/host/sub/hello.txt; if touch /mnt/host/x 2>/dev/null; then echo WRITE-ALLOWED; else echo WRITE-REFUSED; fi',
      [{ host_path: path.join(allowed, 'share'), target: '/mnt/host' }]);
    assert.match(r.log, /from the host/);
    assert.match(r.log, /WRITE-REFUSED/);
    await d.client.deleteVm(r.id);
  });

  test('refused: paths outside the allowed roots, unknown volumes, bad targets, duplicate names', async () => {
    await expectApiError(d.client.createVm({ volumes: [{ host_path: '/etc', target: '/mnt' }] }), 403, 'KILN_ERR_PATH_NOT_ALLOWED');
    await fs.symlink('/etc', path.join(allowed, 'escape'));
    await expectApiError(d.client.createVm({ volumes: [{ host_path: path.join(allowed, 'escape'), target: '/mnt' }] }), 403, 'KILN_ERR_PATH_NOT_ALLOWED');
    await expectApiError(d.client.createVm({ volumes: [{ volume: 'nope', target: '/mnt' }] }), 404, 'KILN_ERR_VOLUME_NOT_FOUND');
    await expectApiError(d.client.createVm({ volumes: [{ host_path: allowed, target: '/' }] }), 400, 'KILN_ERR_VALIDATION');
    await d.client.createVolume('dup', 16);
    await expectApiError(d.client.createVolume('dup', 16), 409, 'KILN_ERR_NAME_CONFLICT');
    await d.client.deleteVolume('dup');
    assert.equal((await d.client.listVms()).length, 0, 'refused creates left no VM behind');
  });
});
