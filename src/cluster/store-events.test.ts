import assert from 'node:assert/strict';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import pino from 'pino';
import { SqliteStore } from '../store/sqlite-store.ts';
import type { EventRecord } from '../store/store.ts';
import { StoreEventFollower } from './store-events.ts';

async function withStore(fn: (s: SqliteStore) => Promise<void>): Promise<void> {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'kiln-follow-'));
  const s = new SqliteStore(path.join(dir, 'kiln.db'));
  try {
    await fn(s);
  } finally {
    await s.close();
    await fs.rm(dir, { recursive: true, force: true });
  }
}

const until = async (what: string, ok: () => boolean) => {
  const deadline = Date.now() + 5_000;
  while (!ok()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
};

test('a follower delivers events committed after it subscribed, once each and in order, and nothing older', async () => {
  await withStore(async (s) => {
    await s.appendEvent({ ts: 1, type: 'old', vmId: null, data: {} });
    const f = new StoreEventFollower(s, pino({ level: 'silent' }), 10);
    const a: EventRecord[] = [];
    const b: EventRecord[] = [];
    const offA = await f.subscribe((e) => a.push(e));
    const e1 = await s.appendEvent({ ts: 2, type: 'one', vmId: 'vm-1', data: {} });
    const offB = await f.subscribe((e) => b.push(e));
    const e2 = await s.appendEvent({ ts: 3, type: 'two', vmId: null, data: {} });
    await until('both events', () => a.length === 2 && b.some((e) => e.seq === e2.seq));
    assert.deepEqual(a.map((e) => e.seq), [e1.seq, e2.seq]);
    assert.ok(b.every((e) => e.seq >= e1.seq), 'the second listener gets nothing from before the first subscribed');
    offA();
    offB();
    // Nobody listening: a later listener starts from the newest event, not from where the last run stopped.
    await s.appendEvent({ ts: 4, type: 'unheard', vmId: null, data: {} });
    const c: EventRecord[] = [];
    const offC = await f.subscribe((e) => c.push(e));
    const e3 = await s.appendEvent({ ts: 5, type: 'three', vmId: null, data: {} });
    await until('the third event', () => c.length >= 1);
    await new Promise((r) => setTimeout(r, 50));
    assert.deepEqual(c.map((e) => e.seq), [e3.seq]);
    offC();
    f.close();
  });
});
