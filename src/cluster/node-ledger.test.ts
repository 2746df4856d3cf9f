// The API role's in-memory node view: when it reads the store, and how its own placements
// count until the store shows them.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { NodeCommitted, NodeRecord } from '../store/store.ts';
import { NodeLedger } from './node-ledger.ts';
import { place } from './placement.ts';

function node(id: string, committedVcpus = 0): NodeRecord {
  return {
    id, name: id, url: `http://${id}`, state: 'ready', incarnation: 1, registeredAt: 0, heartbeatAt: 0, lostAt: null,
    capacity: { vcpus: 8, memoryMib: 8192, committedVcpus, committedMemoryMib: 0, vms: 0, diskFreeBytes: 0, images: [], warm: {} },
  } as unknown as NodeRecord;
}

function fakeStore(rows: () => NodeCommitted[]) {
  const calls = { n: 0 };
  let gate: Promise<void> = Promise.resolve();
  return {
    calls,
    hold(): () => void {
      let open!: () => void;
      gate = new Promise((r) => (open = r));
      return open;
    },
    store: {
      listNodesWithCommitted: async () => {
        calls.n++;
        const snapshot = rows();
        await gate;
        return snapshot;
      },
    },
  };
}

test('the first view reads the store; a fresh one does not; a stale one is served while it refreshes; an old one is read first', async () => {
  let t = 0;
  const f = fakeStore(() => [{ node: node('a'), committed: { vcpus: 2, memoryMib: 512 } }]);
  const l = new NodeLedger(f.store, ['ready'], { refreshMs: 250, maxAgeMs: 2000, now: () => t });
  const v1 = await l.view();
  assert.equal(f.calls.n, 1);
  assert.equal(v1[0]!.capacity.committedVcpus, 2, 'the VM rows\' sum when it exceeds the heartbeat\'s figure');
  t = 100;
  await l.view();
  assert.equal(f.calls.n, 1, 'fresh: no read');
  t = 500;
  const open = f.hold();
  await l.view();
  assert.equal(f.calls.n, 2, 'stale: a refresh started…');
  await l.view();
  assert.equal(f.calls.n, 2, '…one at a time, not waited for');
  open();
  await l.refresh();
  assert.equal(f.calls.n, 2, 'a refresh asked for while one runs shares it');
  t = 5000;
  await l.view();
  assert.equal(f.calls.n, 3, 'too old: read before use');
});

test('placements count at once and until a refresh that began after the node answered has seen them', async () => {
  let t = 0;
  let rows: NodeCommitted[] = [{ node: node('a'), committed: { vcpus: 0, memoryMib: 0 } }, { node: node('b'), committed: { vcpus: 0, memoryMib: 0 } }];
  const f = fakeStore(() => rows);
  const l = new NodeLedger(f.store, ['ready'], { now: () => t });
  await l.view();
  // A burst of 8 one-vCPU creates through this API with no refresh in between: K = all nodes,
  // each placement sees the ones before it, so they spread 4/4 instead of piling on one node.
  const counts: Record<string, number> = { a: 0, b: 0 };
  const done: ((made: boolean) => void)[] = [];
  for (let i = 0; i < 8; i++) {
    const n = place(await l.view(), { vcpus: 1, memoryMib: 64 }, { k: 2, random: () => 0 })!;
    counts[n.id]!++;
    done.push(l.reserve(n.id, { vcpus: 1, memoryMib: 64 }));
  }
  assert.deepEqual(counts, { a: 4, b: 4 });
  assert.equal(l.pending, 8);
  // Two were refused by their node: forgotten at once. The others answered at t = 10.
  done[0]!(false);
  done[1]!(false);
  t = 10;
  for (const d of done.slice(2)) d(true);
  assert.equal(l.pending, 6);
  const committed = (await l.view()).reduce((s, n) => s + n.capacity.committedVcpus, 0);
  assert.equal(committed, 6);
  // A refresh that began before they answered does not drop them; one that began after does,
  // and by then the store has their rows.
  t = 5;
  await l.refresh();
  assert.equal(l.pending, 6);
  rows = [{ node: node('a'), committed: { vcpus: 3, memoryMib: 192 } }, { node: node('b'), committed: { vcpus: 3, memoryMib: 192 } }];
  t = 20;
  await l.refresh();
  assert.equal(l.pending, 0);
  assert.equal((await l.view()).reduce((s, n) => s + n.capacity.committedVcpus, 0), 6, 'counted once, from the store');
});

test('a refresh that fails keeps the last view and is retried by the next create', async () => {
  let t = 0;
  let fail = false;
  const store = {
    listNodesWithCommitted: async () => {
      if (fail) throw new Error('database down');
      return [{ node: node('a'), committed: { vcpus: 1, memoryMib: 0 } }];
    },
  };
  const l = new NodeLedger(store, ['ready'], { now: () => t });
  await l.view();
  fail = true;
  t = 300;
  const v = await l.view();
  assert.equal(v.length, 1, 'the stale view is served');
  t = 3000;
  await assert.rejects(l.view(), /database down/, 'too old to serve: the error reaches the create');
  fail = false;
  assert.equal((await l.view()).length, 1);
});

test('started, the view is kept fresh in the background: a create after a quiet spell does not wait for the store', async () => {
  const f = fakeStore(() => [{ node: node('a'), committed: { vcpus: 0, memoryMib: 0 } }]);
  const l = new NodeLedger(f.store, ['ready'], { refreshMs: 20, maxAgeMs: 5000 }).start();
  try {
    await l.view();
    await new Promise((r) => setTimeout(r, 200));
    assert.ok(f.calls.n >= 4, `read in the background (${f.calls.n} reads)`);
    const open = f.hold();
    // The next background read now hangs; a view is still served from the last one at once.
    await new Promise((r) => setTimeout(r, 25));
    const t0 = performance.now();
    await l.view();
    assert.ok(performance.now() - t0 < 15, 'served without waiting');
    open();
  } finally {
    l.close();
  }
  const n = f.calls.n;
  await new Promise((r) => setTimeout(r, 100));
  assert.equal(f.calls.n, n, 'closed: no more reads');
});
