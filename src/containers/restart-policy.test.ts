import assert from 'node:assert/strict';
import { test } from 'node:test';
import { backoffDelay, formatRestartPolicy, nextBackoffStep, parseRestartPolicy, shouldRestart, STABLE_RUN_MS } from './restart-policy.ts';

test('parses Docker restart policies and refuses anything else', () => {
  assert.deepEqual(parseRestartPolicy(undefined), { name: 'no', maxRetries: null });
  assert.deepEqual(parseRestartPolicy('always'), { name: 'always', maxRetries: null });
  assert.deepEqual(parseRestartPolicy('on-failure'), { name: 'on-failure', maxRetries: null });
  assert.deepEqual(parseRestartPolicy('on-failure:3'), { name: 'on-failure', maxRetries: 3 });
  assert.equal(formatRestartPolicy(parseRestartPolicy('on-failure:3')), 'on-failure:3');
  for (const bad of ['yes', 'on-failure:', 'on-failure:-1', 'unless-stopped:2', 'always:3']) {
    assert.throws(() => parseRestartPolicy(bad), { code: 'KILN_ERR_VALIDATION' }, bad);
  }
});

test('on-failure:N restarts only non-zero exits, at most N times', () => {
  const p = parseRestartPolicy('on-failure:3');
  assert.equal(shouldRestart(p, { exitCode: 1, userStopped: false, restartCount: 0 }), true);
  assert.equal(shouldRestart(p, { exitCode: 1, userStopped: false, restartCount: 2 }), true);
  assert.equal(shouldRestart(p, { exitCode: 1, userStopped: false, restartCount: 3 }), false);
  assert.equal(shouldRestart(p, { exitCode: 0, userStopped: false, restartCount: 0 }), false);
  assert.equal(shouldRestart(p, { exitCode: null, userStopped: false, restartCount: 0 }), true);
});

test('always restarts any exit unless the user stopped it; no never restarts', () => {
  const always = parseRestartPolicy('always');
  assert.equal(shouldRestart(always, { exitCode: 0, userStopped: false, restartCount: 99 }), true);
  assert.equal(shouldRestart(always, { exitCode: 137, userStopped: true, restartCount: 0 }), false);
  assert.equal(shouldRestart(parseRestartPolicy('no'), { exitCode: 1, userStopped: false, restartCount: 0 }), false);
});

test('backoff: 100 ms doubling, capped, reset after a stable run', () => {
  assert.deepEqual([0, 1, 2, 3].map(backoffDelay), [100, 200, 400, 800]);
  assert.equal(backoffDelay(50), 30_000);
  assert.equal(nextBackoffStep(3, 500), 4);
  assert.equal(nextBackoffStep(3, STABLE_RUN_MS), 0);
});
