import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { Metrics } from '../metrics/metrics.ts';
import type { PhaseRecord, Store } from '../store/store.ts';
import { Timeline } from './timeline.ts';

function timeline() {
  const phases = new Map<string, PhaseRecord>();
  const store = { recordPhase: async (p: PhaseRecord) => void phases.set(p.name, p) } as unknown as Store;
  const metrics = { provisionPhase: { observe: () => {} } } as unknown as Metrics;
  return { t: new Timeline(store, metrics, 'vm-1', 1, { backend: 'qemu', accelerator: 'tcg' }), phases };
}

test('settle ends open phases and records ones never begun; late markers do not reopen them', async () => {
  const { t, phases } = timeline();
  t.begin('guest.kernel', 100);
  await t.settle(['guest.kernel', 'guest.init'], 250);
  assert.deepEqual([...phases.values()].map((p) => [p.name, p.startedAt, p.endedAt]), [['guest.kernel', 100, 250], ['guest.init', 250, 250]]);
  // The console's markers arrive after the agent's hello.
  await t.end('guest.kernel', 300);
  t.begin('guest.init', 310);
  await t.end('guest.init', 400);
  assert.deepEqual(phases.get('guest.init'), { vmId: 'vm-1', boot: 1, name: 'guest.init', startedAt: 250, endedAt: 250 });
});

test('a phase ended by a signal timestamped before it opened (a hello overtaking its caller) is empty, not negative', async () => {
  const { t, phases } = timeline();
  t.begin('agent.hello', 500);
  await t.end('agent.hello', 480);
  assert.deepEqual([phases.get('agent.hello')!.startedAt, phases.get('agent.hello')!.endedAt], [500, 500]);
});
