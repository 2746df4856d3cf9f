import assert from 'node:assert/strict';
import { test } from 'node:test';
import { FunctionScheduler, type InstanceLayer, type SchedulerLimits } from './scheduler.ts';

/** An instance layer whose starts the test resolves by hand; it records every live instance. */
class FakeLayer implements InstanceLayer<{ id: number; version: number }> {
  next = 0;
  live = new Set<number>();
  maxLive = 0;
  stopped: { id: number; why: string }[] = [];
  pending: { version: number; resolve: () => void; reject: (e: Error) => void }[] = [];
  auto = true;

  start(version: number) {
    return new Promise<{ id: number; version: number }>((resolve, reject) => {
      const id = ++this.next;
      const go = () => {
        this.live.add(id);
        this.maxLive = Math.max(this.maxLive, this.live.size);
        resolve({ id, version });
      };
      if (this.auto) queueMicrotask(go);
      else this.pending.push({ version, resolve: go, reject });
    });
  }

  async stop(i: { id: number; version: number }, why: string) {
    this.live.delete(i.id);
    this.stopped.push({ id: i.id, why });
  }
}

const limits = (o: Partial<SchedulerLimits> = {}): SchedulerLimits => ({ maxInstances: 3, concurrency: 1, queueSize: 100, idleTimeoutMs: 1000, minInstances: 0, ...o });
const tick = () => new Promise((r) => setImmediate(r));

test('20 concurrent calls at max_instances 3, concurrency 1: all run, never more than 3 instances, first 3 cold', async () => {
  const layer = new FakeLayer();
  const s = new FunctionScheduler('f', layer, 1, limits());
  let running = 0;
  let maxRunning = 0;
  const results = await Promise.all(Array.from({ length: 20 }, async () => {
    const slot = await s.acquire();
    running++;
    maxRunning = Math.max(maxRunning, running);
    await new Promise((r) => setTimeout(r, 2));
    running--;
    slot.release();
    return slot.cold;
  }));
  assert.equal(layer.maxLive, 3);
  assert.equal(maxRunning, 3);
  assert.equal(results.filter(Boolean).length, 3);
  assert.equal(s.snapshot().instances.length, 3);
});

test('a full queue throws KILN_ERR_FUNCTION_THROTTLED (429)', async () => {
  const layer = new FakeLayer();
  const s = new FunctionScheduler('f', layer, 1, limits({ maxInstances: 1, queueSize: 2 }));
  const first = await s.acquire();
  const queued = [s.acquire(), s.acquire()];
  await assert.rejects(s.acquire(), (e: { code?: string; status?: number }) => e.code === 'KILN_ERR_FUNCTION_THROTTLED' && e.status === 429);
  first.release();
  const a = await queued[0]!;
  assert.equal(a.cold, false);
  a.release();
  (await queued[1]!).release();
});

test('a new version: in-flight calls finish on the old instance, which then stops; new calls get new instances', async () => {
  const layer = new FakeLayer();
  const s = new FunctionScheduler('f', layer, 1, limits({ maxInstances: 2 }));
  const old = await s.acquire();
  assert.equal(old.instance.version, 1);
  s.setVersion(2, limits({ maxInstances: 2 }));
  const fresh = await s.acquire();
  assert.equal(fresh.instance.version, 2);
  assert.equal(fresh.cold, true);
  assert.equal(layer.live.size, 2);
  old.release();
  await tick();
  assert.deepEqual(layer.stopped.map((x) => x.id), [old.instance.id]);
  fresh.release();
  const again = await s.acquire();
  assert.equal(again.instance.id, fresh.instance.id, 'the warm v2 instance is reused');
  again.release();
});

test('at the cap, an idle old-version instance makes room for the new version', async () => {
  const layer = new FakeLayer();
  const s = new FunctionScheduler('f', layer, 1, limits({ maxInstances: 1 }));
  const a = await s.acquire();
  const b = s.acquire();
  s.setVersion(2, limits({ maxInstances: 1 }));
  a.release();
  const slot = await b;
  assert.equal(slot.instance.version, 2);
  assert.ok(layer.maxLive <= 1);
  slot.release();
});

test('retired instances (timeout, crash) are stopped and replaced for the next call; the cap holds meanwhile', async () => {
  const layer = new FakeLayer();
  const s = new FunctionScheduler('f', layer, 1, limits({ maxInstances: 1 }));
  const a = await s.acquire();
  const next = s.acquire();
  a.release('retire');
  const b = await next;
  assert.notEqual(b.instance.id, a.instance.id);
  assert.equal(b.cold, true);
  assert.equal(layer.maxLive, 1);
  b.release();
});

test('idle instances are reaped after idle_timeout down to min_instances', async () => {
  const layer = new FakeLayer();
  let now = 0;
  const s = new FunctionScheduler('f', layer, 1, limits({ minInstances: 1, idleTimeoutMs: 1000 }), () => {}, () => now);
  const slots = await Promise.all([s.acquire(), s.acquire(), s.acquire()]);
  for (const x of slots) x.release();
  now = 500;
  s.reap();
  await tick();
  assert.equal(layer.live.size, 3);
  now = 1500;
  s.reap();
  await tick();
  assert.equal(layer.live.size, 1, 'min_instances stays');
});

test('a failed start fails its call and lets the next queued call try again', async () => {
  const layer = new FakeLayer();
  layer.auto = false;
  const s = new FunctionScheduler('f', layer, 1, limits({ maxInstances: 1 }));
  const a = s.acquire();
  const b = s.acquire();
  await tick();
  layer.pending.shift()!.reject(new Error('boot failed'));
  await assert.rejects(a, /boot failed/);
  await tick();
  assert.equal(layer.pending.length, 1, 'the queued call started its own instance');
  layer.pending.shift()!.resolve();
  (await b).release();
});

test('deleting the function fails queued calls and stops its instances', async () => {
  const layer = new FakeLayer();
  const s = new FunctionScheduler('f', layer, 1, limits({ maxInstances: 1 }));
  const a = await s.acquire();
  const b = s.acquire();
  a.release();
  (await b).release();
  const c = await s.acquire();
  const d = s.acquire();
  await s.close();
  await assert.rejects(d, { code: 'KILN_ERR_FUNCTION_NOT_FOUND' });
  c.release();
  await tick();
  assert.equal(layer.live.size, 0);
});

test('retireAll (its node fenced every VM): each instance is stopped once, min_instances come back, the next call is cold on a new one', async () => {
  const layer = new FakeLayer();
  const s = new FunctionScheduler('f', layer, 1, limits({ minInstances: 2 }));
  s.ensureMinInstances();
  for (let i = 0; i < 5 && layer.live.size < 2; i++) await tick();
  assert.deepEqual([...layer.live].sort(), [1, 2]);
  await s.retireAll('fenced');
  assert.deepEqual(layer.stopped.map((x) => x.id).sort(), [1, 2]);
  assert.ok(layer.stopped.every((x) => x.why === 'fenced'));
  for (let i = 0; i < 5 && layer.live.size < 2; i++) await tick();
  assert.deepEqual([...layer.live].sort(), [3, 4], 'min_instances started again');
  await tick();
  const slot = await s.acquire();
  assert.ok([3, 4].includes(slot.instance.id), 'served by a new instance');
  slot.release();
});
