// Admission control against a real kilnd and real VMs: a host whose capacity is set to three
// vCPUs admits three one-vCPU VMs out of six concurrent creates, refuses the others with
// KILN_ERR_CAPACITY before anything is made for them, and admits again once capacity is free.
import assert from 'node:assert/strict';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { KilnApiError } from '../src/sdk/client.ts';
import { listLinks } from '../src/tools/ip.ts';
import { BACKEND_SKIP as skip } from './helpers/backend.ts';
import { startKilnd, vmmPids, waitForState, type TestDaemon } from './helpers/kilnd.ts';
import { expectApiError } from './helpers/api-errors.ts';

let d: TestDaemon;
// Three vCPUs whatever the host: overcommit = 3 / host CPUs.
const CAPACITY = 3;

before(async () => {
  if (skip) return;
  d = await startKilnd({ env: { KILN_CPU_OVERCOMMIT: String(CAPACITY / os.cpus().length) } });
});

after(() => d?.dispose());

describe('admission control', { skip }, () => {
  test('six concurrent creates on a 3-vCPU budget: three admitted and ready, three refused with nothing made', async () => {
    const health = await d.client.health();
    assert.equal(health.capacity.vcpus.capacity, CAPACITY);
    assert.equal(health.capacity.vcpus.committed, 0);

    const results = await Promise.allSettled(Array.from({ length: 6 }, (_, i) => d.client.createVm({ name: `adm-${i}`, vcpus: 1, memory_mib: 128 })));
    const admitted = results.flatMap((r) => (r.status === 'fulfilled' ? [r.value] : []));
    const refused = results.flatMap((r) => (r.status === 'rejected' ? [r.reason as unknown] : []));
    assert.equal(admitted.length, CAPACITY, `admitted ${admitted.map((v) => v.name)}`);
    assert.equal(refused.length, 6 - CAPACITY);
    for (const e of refused) {
      assert.ok(e instanceof KilnApiError, String(e));
      assert.equal(e.status, 429);
      assert.equal(e.code, 'KILN_ERR_CAPACITY');
      assert.match(e.message, /vCPUs: 3 committed \+ 1 asked > 3/);
    }

    // Nothing of the refused creates exists: no record, no runtime dir, no tap, no VMM.
    const vms = await d.client.listVms();
    assert.deepEqual(vms.map((v) => v.id).sort(), admitted.map((v) => v.id).sort());
    // The runtime dirs are made by the pipeline after the 202, so they are compared once ready.
    for (const vm of admitted) assert.equal((await waitForState(d.client, vm.id, ['ready', 'failed'])).state, 'ready');
    assert.deepEqual((await fs.readdir(path.join(d.stateDir, 'vms')).catch(() => [])).sort(), admitted.map((v) => v.id).sort());
    assert.equal((await vmmPids(d.stateDir)).length, CAPACITY);
    assert.equal((await listLinks({ master: d.network.bridge })).length, CAPACITY);
    const full = await d.client.health();
    assert.deepEqual(full.capacity.vcpus, { committed: CAPACITY, capacity: CAPACITY });
    assert.ok(/kiln_capacity\{resource="vcpus",kind="committed"\} 3/.test(await (await fetch(`${d.url}/metrics`, { headers: d.authHeaders })).text()));

    // A stopped VM commits nothing; a deleted one neither.
    await d.client.stopVm(admitted[0]!.id);
    const next = await d.client.createVm({ name: 'adm-after-stop', vcpus: 1, memory_mib: 128 });
    await expectApiError(d.client.startVm(admitted[0]!.id), 429, 'KILN_ERR_CAPACITY');
    await d.client.deleteVm(admitted[1]!.id);
    await d.client.startVm(admitted[0]!.id);
    assert.equal((await waitForState(d.client, next.id, ['ready', 'failed'])).state, 'ready');
    assert.equal((await waitForState(d.client, admitted[0]!.id, ['ready', 'failed'])).state, 'ready');
  });
});
