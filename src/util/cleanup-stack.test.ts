import assert from 'node:assert/strict';
import { test } from 'node:test';
import { CleanupStack } from './cleanup-stack.ts';
import { KeyedLock } from './keyed-lock.ts';

test('undo runs in reverse, runs every step even after a failure, and reports all failures', async () => {
  const order: string[] = [];
  const s = new CleanupStack();
  s.push('a', () => void order.push('a'));
  s.push('b', () => {
    order.push('b');
    throw new Error('b broke');
  });
  s.push('c', async () => void order.push('c'));
  const errors = await s.run();
  assert.deepEqual(order, ['c', 'b', 'a']);
  assert.deepEqual(errors.map((e) => `undo ${e.name}: ${(e.error as Error).message}`), ['undo b: b broke']);
  assert.deepEqual(await s.run(), [], 'runs once');
});

test('release() hands the resources over: nothing is undone', async () => {
  let undone = false;
  const s = new CleanupStack();
  s.push('x', () => void (undone = true));
  s.release();
  await s.run();
  assert.equal(undone, false);
});

test('KeyedLock serialises per key, runs keys in parallel, survives a failing task', async () => {
  const lock = new KeyedLock();
  const log: string[] = [];
  let release!: () => void;
  const gate = new Promise<void>((r) => (release = r));
  const first = lock.run('vm', async () => {
    log.push('1 start');
    await gate;
    log.push('1 end');
    throw new Error('boom');
  });
  const second = lock.run('vm', async () => void log.push('2'));
  const other = lock.run('other', async () => void log.push('other'));
  await other;
  assert.deepEqual(log, ['1 start', 'other']);
  release();
  await assert.rejects(first, /boom/);
  await second;
  assert.deepEqual(log, ['1 start', 'other', '1 end', '2']);
});
