import assert from 'node:assert/strict';
import { test } from 'node:test';
import { GuestInputGate, TokenBucket } from './guest-input-gate.ts';

test('a token bucket allows its burst, then its rate, never more than the burst saved up', () => {
  let now = 0;
  const b = new TokenBucket(10, 5, () => now);
  assert.equal([...Array(8)].filter(() => b.take()).length, 5, 'the burst');
  now += 100; // 1 token
  assert.equal(b.take(), true);
  assert.equal(b.take(), false);
  now += 60_000; // refills to the burst only
  assert.equal([...Array(20)].filter(() => b.take()).length, 5);
});

test('over a long flood a gate passes rate × time + burst and emits one notice per interval', () => {
  let now = 0;
  const g = new GuestInputGate(5, 20, 10_000, () => now);
  let passed = 0;
  const notices: number[] = [];
  // 60 s at 10 000 attempts per second.
  for (let i = 0; i < 600_000; i++) {
    now = i / 10;
    const v = g.admit();
    if (v.pass) passed++;
    else if (v.notice) notices.push(v.notice.dropped);
  }
  assert.ok(passed >= 5 * 60 + 20 - 2 && passed <= 5 * 60 + 20 + 1, `passed ${passed}`);
  assert.equal(notices.length, 6, `one notice per 10 s: ${notices}`);
  assert.equal(notices[0], 1, 'the first drop is noticed at once');
  const reported = notices.reduce((a, b) => a + b, 0);
  // Drops after the last notice wait for the next one (≤ 10 s of them); all others are counted.
  assert.ok(reported + passed <= 600_000 && reported >= 600_000 - passed - 10 * 10_000, `reported ${reported}`);
});
