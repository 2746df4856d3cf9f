import assert from 'node:assert/strict';
import { test } from 'node:test';
import { isKilnError } from '../errors.ts';
import type { VmState } from '../store/store.ts';
import { Admission } from './admission.ts';

type Row = { vcpus: number; memoryMib: number; state: VmState };

function admission(rows: Row[], host = { vcpus: 2, memoryMib: 4096 }) {
  const config = { cpuOvercommit: 2, memoryOvercommit: 1, reservedMemoryMib: 1024, vmmOverheadMib: 64 };
  // A store whose reads are slow, so concurrent admits would interleave if they were not serial.
  const list = async () => {
    await new Promise((r) => setTimeout(r, 5));
    return rows.slice();
  };
  return new Admission(config, host, list);
}

test('capacity is host × overcommit, less the host reserve for memory', () => {
  const a = admission([]);
  assert.deepEqual(a.capacity, { vcpus: 4, memoryMib: 3072 });
});

test('only VMs that hold a VMM commit resources', async () => {
  const states: VmState[] = ['creating', 'booting', 'ready', 'paused', 'stopping', 'stopped', 'failed'];
  const a = admission(states.map((state) => ({ vcpus: 1, memoryMib: 100, state })));
  const r = await a.report();
  assert.deepEqual(r.vcpus, { committed: 5, capacity: 4 });
  assert.deepEqual(r.memory_mib, { committed: 5 * 164, capacity: 3072 });
  assert.equal(r.vms, 5);
});

test('a VM that does not fit is refused with KILN_ERR_CAPACITY and nothing is committed', async () => {
  const rows: Row[] = [{ vcpus: 3, memoryMib: 256, state: 'ready' }];
  const a = admission(rows);
  let committed = 0;
  await assert.rejects(
    a.admit({ vcpus: 2, memoryMib: 256 }, async () => void committed++),
    (e) => isKilnError(e) && e.code === 'KILN_ERR_CAPACITY' && e.status === 429 && /vCPUs: 3 committed \+ 2 asked > 4/.test(e.message),
  );
  assert.equal(committed, 0);
  await assert.rejects(a.admit({ vcpus: 1, memoryMib: 4096 }, async () => void committed++), (e) => isKilnError(e) && /memory:/.test(e.message));
  assert.equal(await a.admit({ vcpus: 1, memoryMib: 256 }, async () => 'made'), 'made');
});

test('concurrent admits are serial: exactly as many fit as capacity allows', async () => {
  const rows: Row[] = [];
  const a = admission(rows);
  const results = await Promise.allSettled(
    Array.from({ length: 10 }, () => a.admit({ vcpus: 1, memoryMib: 128 }, async () => void rows.push({ vcpus: 1, memoryMib: 128, state: 'creating' }))),
  );
  assert.equal(results.filter((r) => r.status === 'fulfilled').length, 4);
  assert.equal(rows.length, 4);
  for (const r of results) if (r.status === 'rejected') assert.equal((r.reason as { code: string }).code, 'KILN_ERR_CAPACITY');
});

test('a commit that throws does not block later admits', async () => {
  const a = admission([]);
  await assert.rejects(a.admit({ vcpus: 1, memoryMib: 1 }, async () => { throw new Error('insert failed'); }), /insert failed/);
  assert.equal(await a.admit({ vcpus: 1, memoryMib: 1 }, async () => 1), 1);
});
