import assert from 'node:assert/strict';
import { test } from 'node:test';
import { pollWithBackoff } from './backoff.ts';

test('pollWithBackoff doubles its delay up to the cap and stops when the probe succeeds', async () => {
  const at: number[] = [];
  const t0 = Date.now();
  const attempts = await pollWithBackoff(async () => (at.push(Date.now() - t0), at.length === 5), { initialMs: 10, maxMs: 40, signal: AbortSignal.timeout(5000) });
  assert.equal(attempts, 5);
  const gaps = at.slice(1).map((t, i) => t - at[i]!);
  // 10, 20, 40, 40 (capped): each gap at least its delay.
  [10, 20, 40, 40].forEach((min, i) => assert.ok(gaps[i]! >= min - 2, `gap ${i} = ${gaps[i]} ≥ ${min}`));
});

test('pollWithBackoff gives up at the deadline and treats a throwing probe as not ready', async () => {
  await assert.rejects(pollWithBackoff(() => Promise.reject(new Error('refused')), { initialMs: 5, signal: AbortSignal.timeout(60) }), { name: 'TimeoutError' });
});
