// NetworkManager.sync: renders are serialised and coalesced. A render reads the store when it
// starts, so callers that arrive while one waits to start share it, and a caller arriving
// after a render started gets the next one (its change may not be in what the first read).
import assert from 'node:assert/strict';
import { test } from 'node:test';
import pino from 'pino';
import type { Store } from '../store/store.ts';
import { NetworkManager } from './network-manager.ts';

test('concurrent syncs: one render running, one shared by every caller that queued behind it', async () => {
  let renders = 0;
  const gates: (() => void)[] = [];
  const m = new NetworkManager({ bridge: 'ktest0', cidr: '10.250.0.0/24' } as ConstructorParameters<typeof NetworkManager>[0], { store: {} as Store, log: pino({ level: 'silent' }) });
  // The render reads the store and runs nft: here it only counts and waits to be released.
  (m as unknown as { render: () => Promise<void> }).render = () => {
    renders++;
    return new Promise<void>((r) => gates.push(r));
  };
  const first = m.sync();
  await new Promise((r) => setImmediate(r));
  assert.equal(renders, 1, 'the first render started');
  const queued = Array.from({ length: 10 }, () => m.sync());
  assert.ok(queued.every((p) => p === queued[0]), 'the ten callers behind it share one render');
  gates.shift()!();
  await first;
  await new Promise((r) => setImmediate(r));
  assert.equal(renders, 2, 'the shared render started after the first');
  const late = m.sync();
  assert.notEqual(late, queued[0], 'a caller after the shared render started gets a render of its own');
  gates.shift()!();
  await queued[0];
  await new Promise((r) => setImmediate(r));
  gates.shift()!();
  await late;
  assert.equal(renders, 3);
});
