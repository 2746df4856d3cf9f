import assert from 'node:assert/strict';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import pino from 'pino';
import { SqliteStore } from '../store/sqlite-store.ts';
import { EventBus } from './event-bus.ts';

test('retention keeps each VM and the whole table at or under their caps at every moment', async () => {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'kiln-bus-'));
  const store = new SqliteStore(path.join(dir, 'kiln.db'));
  try {
    const bus = new EventBus(store, pino({ level: 'silent' }), { keepPerVm: 20, keepTotal: 50, maxAgeMs: 86_400_000 });
    let maxA = 0;
    let maxAll = 0;
    for (let i = 0; i < 300; i++) {
      bus.publish('vm.guest', i % 4 === 0 ? 'vm-b' : 'vm-a', { i });
      if (i % 4 === 0) bus.publish('daemon', null, { i });
      await bus.flush();
      maxA = Math.max(maxA, (await store.listEvents({ vmId: 'vm-a', limit: 10_000 })).length);
      maxAll = Math.max(maxAll, (await store.listEvents({ limit: 10_000 })).length);
    }
    assert.equal(maxA, 20, 'vm-a reaches its cap and never passes it');
    assert.ok(maxAll <= 50, `total ${maxAll}`);
    const a = await store.listEvents({ vmId: 'vm-a', limit: 10_000 });
    assert.equal(a.at(-1)!.data.i, 299, 'the newest are kept');
  } finally {
    await store.close();
    await fs.rm(dir, { recursive: true, force: true });
  }
});
