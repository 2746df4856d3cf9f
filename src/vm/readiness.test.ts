import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import { test } from 'node:test';
import { PUSH_GRACE_MS, detectReadiness } from './readiness.ts';

test('push: once the hello is in, the console-triggered fallback never fires', async () => {
  const fallbacks: string[] = [];
  let probes = 0;
  const ac = new AbortController();
  const r = await detectReadiness({
    mode: 'push',
    fallback: true,
    ip: '10.0.0.2',
    mac: '02:00:00:00:00:02',
    client: { status: async () => { probes++; return {}; } } as never,
    hello: Promise.resolve(123),
    // The marker comes after the hello (the guest pushes first).
    consoleReady: sleep(50).then(() => undefined),
    neighbours: {} as never,
    signal: ac.signal,
    onFallback: (why) => fallbacks.push(why),
  });
  assert.deepEqual(r, { by: 'push', knownAt: 123 });
  await sleep(PUSH_GRACE_MS + 300);
  ac.abort();
  assert.deepEqual(fallbacks, []);
  assert.equal(probes, 0);
});

test('push: without a hello, the fallback polls after the grace period', async () => {
  const fallbacks: string[] = [];
  const ac = new AbortController();
  const r = await detectReadiness({
    mode: 'push', fallback: true, ip: '10.0.0.2', mac: '02:00:00:00:00:02',
    client: { status: async () => ({}) } as never,
    hello: new Promise<number>(() => {}),
    consoleReady: Promise.resolve(),
    neighbours: {} as never,
    signal: ac.signal,
    onFallback: (why) => fallbacks.push(why),
  });
  ac.abort();
  assert.equal(r.by, 'poll');
  assert.equal(fallbacks.length, 1);
});
