// The clone pool's bookkeeping on a fake VM manager: takes, misses, and when refills start
// (only once the takes of a burst are done, so restores do not compete with them).
import assert from 'node:assert/strict';
import { test } from 'node:test';
import pino from 'pino';
import { Metrics } from '../metrics/metrics.ts';
import type { Store, VmRecord } from '../store/store.ts';
import type { VmManager } from '../vm/vm-manager.ts';
import { ClonePool, REFILL_QUIET_MS } from './clone-pool.ts';
import { until } from '../../test/helpers/until.ts';

function fakePool(opts: { size: number; adoptMs?: number }) {
  const restores: { snapshot: string; at: number }[] = [];
  let n = 0;
  const vms = {
    adopt: async (id: string) => {
      await new Promise((r) => setTimeout(r, opts.adoptMs ?? 0));
      return { id } as VmRecord;
    },
    waitFor: async () => {},
    agent: async () => ({ status: async () => ({}) }),
    pause: async () => {},
    delete: async () => {},
  } as unknown as VmManager;
  const pool = new ClonePool({
    size: opts.size,
    vms,
    store: { listVms: async () => [] } as unknown as Store,
    log: pino({ level: 'silent' }),
    metrics: new Metrics(async () => ({})),
    restore: async (snapshot) => {
      restores.push({ snapshot, at: performance.now() });
      return { id: `pooled-${++n}` } as VmRecord;
    },
  });
  return { pool, restores };
}

const req = { env: {}, customEgress: false };

test('a burst of takes is served before the pool refills; the refill starts once they are quiet', async () => {
  const { pool, restores } = fakePool({ size: 3, adoptMs: 50 });
  pool.refill('s1');
  await until('the pool is full', async () => pool.report().ready === 3, 5000);
  const before = restores.length;
  const t0 = performance.now();
  const taken = await Promise.all([pool.take('s1', req), pool.take('s1', req), pool.take('s1', req)]);
  const done = performance.now();
  assert.equal(taken.filter((v) => v !== null).length, 3);
  assert.equal(restores.length, before, 'no refill while the takes ran');
  await until('the pool refilled', async () => pool.report().ready === 3, 5000);
  const firstRefill = restores[before]!.at;
  assert.ok(firstRefill - done >= REFILL_QUIET_MS - 5, `the refill waited for the quiet period (${(firstRefill - done).toFixed(0)} ms after the burst)`);
  assert.ok(firstRefill - t0 < 5000);
  assert.deepEqual({ hits: pool.report().hits, misses: pool.report().misses }, { hits: 3, misses: 0 });
  await pool.close();
});

test('a take arriving in the quiet period postpones the refill; a miss refills too', async () => {
  const { pool, restores } = fakePool({ size: 2 });
  assert.equal(await pool.take('s2', req), null, 'an empty pool is a miss');
  assert.equal(restores.length, 0, 'not at once');
  await until('the miss refilled the pool', async () => pool.report().ready === 2, 5000);
  await pool.take('s2', req);
  await new Promise((r) => setTimeout(r, REFILL_QUIET_MS / 2));
  await pool.take('s2', req);
  const afterTakes = performance.now();
  const before = restores.length;
  await until('the pool refilled', async () => pool.report().ready === 2, 5000);
  assert.ok(restores[before]!.at - afterTakes >= REFILL_QUIET_MS - 5, 'the second take restarted the quiet period');
  await pool.close();
});

test('a request with its own egress policy is never served from the pool', async () => {
  const { pool } = fakePool({ size: 1 });
  pool.refill('s3');
  await until('the pool is full', async () => pool.report().ready === 1, 5000);
  assert.equal(await pool.take('s3', { ...req, customEgress: true }), null);
  assert.equal(pool.report().ready, 1);
  await pool.close();
});

test('drain cancels a pending refill: nothing is restored for a snapshot that went away', async () => {
  const { pool, restores } = fakePool({ size: 1 });
  assert.equal(await pool.take('s4', req), null);
  await pool.drain('s4');
  await new Promise((r) => setTimeout(r, REFILL_QUIET_MS * 2));
  assert.equal(restores.length, 0);
  await pool.close();
});
