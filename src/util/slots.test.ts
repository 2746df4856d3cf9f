import assert from 'node:assert/strict';
import { test } from 'node:test';
import { Slots } from './slots.ts';

test('at most `size` holders; waiters are served first come, first served; a double release frees one slot', async () => {
  const s = new Slots(2);
  const a = await s.acquire();
  const b = await s.acquire();
  assert.equal(a.waited, false);
  const order: string[] = [];
  const c = s.acquire().then((x) => (order.push('c'), x));
  const d = s.acquire().then((x) => (order.push('d'), x));
  await new Promise((r) => setImmediate(r));
  assert.deepEqual(s.usage, { used: 2, waiting: 2 });
  a.release();
  a.release();
  const cs = await c;
  assert.equal(cs.waited, true);
  await new Promise((r) => setImmediate(r));
  assert.deepEqual(order, ['c'], 'one release lets one waiter in, however often it is called');
  b.release();
  (await d).release();
  cs.release();
  assert.deepEqual(s.usage, { used: 0, waiting: 0 });
});
