// NodeMember's fencing and the takeover of lost containers, on a real SQLite store (the same
// Store interface the cluster's PostgreSQL passes in the conformance suite). The store is cut
// by a wrapper whose every call fails, as a node's calls fail when its database is unreachable.
// The end-to-end version with PostgreSQL, kilnd and VMs is test/cluster-failover.test.ts.
import assert from 'node:assert/strict';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import pino from 'pino';
import { capacity, image, vm } from '../store/conformance.ts';
import { SqliteStore } from '../store/sqlite-store.ts';
import type { ContainerRecord, Store } from '../store/store.ts';
import { FENCED_REASON, NodeMember, fenceAfterMs } from './node-member.ts';
import { STAYS_LOST_VOLUMES, Takeover } from './takeover.ts';

const log = pino({ level: 'silent' });

async function withStore(fn: (s: SqliteStore) => Promise<void>): Promise<void> {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'kiln-member-'));
  const s = new SqliteStore(path.join(dir, 'kiln.db'));
  try {
    await s.insertImage(image);
    await fn(s);
  } finally {
    await s.close();
    await fs.rm(dir, { recursive: true, force: true });
  }
}

/** The store as a node cut from it sees it: every call fails while `cut.on`. */
function cuttable(s: Store, cut: { on: boolean }): Store {
  return new Proxy(s, {
    get(target, prop, receiver) {
      const v = Reflect.get(target, prop, receiver);
      if (typeof v !== 'function') return v;
      return (...args: unknown[]) => (cut.on ? Promise.reject(new Error('connect ECONNREFUSED')) : v.apply(target, args));
    },
  });
}

const container = (id: string, over: Partial<ContainerRecord> = {}): ContainerRecord => ({
  id, image: 'default', restart: { name: 'always', maxRetries: null }, autoRemove: false, restartCount: 0, backoffStep: 0,
  userStopped: false, handledBoot: 0, restartAt: null, createdAt: 1, ...over,
});

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

test('the fence deadline comes two heartbeats before the lost deadline (at least half of it)', () => {
  assert.equal(fenceAfterMs(2_000, 15_000), 11_000);
  assert.equal(fenceAfterMs(1_000, 6_000), 4_000);
  assert.equal(fenceAfterMs(1_000, 3_000), 1_500);
});

test('a node that cannot heartbeat past the fence deadline kills its VMMs once; back before it was marked lost, it records them stopped and unfences', async () => {
  await withStore(async (s) => {
    const cut = { on: false };
    const kills: string[] = [];
    const released: string[][] = [];
    let running = ['vm-a', 'vm-b'];
    const member = new NodeMember({
      store: cuttable(s, cut), nodeId: 'node-1', name: 'one', heartbeatMs: 50, lostAfterMs: 600, log, capacity: async () => capacity(),
      fence: {
        kill: async (reason) => {
          kills.push(reason);
          const k = running;
          running = [];
          return k;
        },
        release: async (ids) => void released.push([...ids]),
      },
    });
    for (const id of ['vm-a', 'vm-b']) await s.insertVm({ ...vm(id), nodeId: 'node-1', state: 'ready' });
    await s.insertVm({ ...vm('vm-other'), nodeId: 'node-2', state: 'ready' });
    await member.start('http://one.invalid');
    try {
      await sleep(member.fenceAfterMs);
      assert.equal(kills.length, 0, 'heartbeating: never fenced');
      cut.on = true;
      const cutAt = Date.now();
      while (!member.isFenced && Date.now() - cutAt < 5_000) await sleep(10);
      const fencedAfter = Date.now() - cutAt;
      assert.ok(member.isFenced);
      assert.ok(fencedAfter >= member.fenceAfterMs - 2 * 50 && fencedAfter < member.fenceAfterMs + 500, `fenced ${fencedAfter} ms after the cut (deadline ${member.fenceAfterMs})`);
      assert.match(kills[0]!, /no heartbeat for \d+ ms/);
      // Bounded wait, not a fixed sleep: a loaded host runs the watchdog's ticks late.
      const fencedAt = Date.now();
      while (kills.length < 2 && Date.now() - fencedAt < 5_000) await sleep(10);
      assert.ok(kills.length >= 2, 'the watchdog keeps killing whatever a boot in flight spawned');
      assert.deepEqual(released, []);
      // Back before anyone swept it: it registers again instead of heartbeating on.
      cut.on = false;
      const restoredAt = Date.now();
      while (member.isFenced && Date.now() - restoredAt < 5_000) await sleep(10);
      assert.ok(!member.isFenced, 'unfenced after its rejoin');
      assert.deepEqual(released, [['vm-a', 'vm-b']]);
      assert.equal(member.node?.incarnation, 2, 'a new incarnation');
      for (const id of ['vm-a', 'vm-b']) {
        const v = (await s.getVm(id))!;
        assert.equal(v.state, 'stopped');
        assert.equal(v.stateReason, FENCED_REASON);
      }
      assert.equal((await s.getVm('vm-other'))?.state, 'ready', "another node's VM is untouched");
      const fencesSoFar = kills.length;
      await sleep(member.fenceAfterMs + 200);
      assert.equal(kills.length, fencesSoFar, 'heartbeating again: no more fencing');
    } finally {
      await member.stop();
    }
  });
});

test('a lost container moves to exactly one of the racing nodes; one with volumes or without a restart policy stays lost', async () => {
  await withStore(async (s) => {
    await s.registerNode({ id: 'node-dead', name: 'dead', url: 'http://x', capacity: capacity() }, 1000);
    const rows: [string, Partial<ContainerRecord>, boolean][] = [
      ['ctr-move', {}, false],
      ['ctr-vol', {}, true],
      ['ctr-no', { restart: { name: 'no', maxRetries: null } }, false],
      ['ctr-user', { userStopped: true }, false],
      ['ctr-done', { restart: { name: 'on-failure', maxRetries: 2 }, restartCount: 2 }, false],
    ];
    for (const [id, over, volume] of rows) {
      await s.insertVm({ ...vm(id), nodeId: 'node-dead', state: 'ready', ip: `10.0.0.${rows.findIndex((r) => r[0] === id) + 2}`, volumes: volume ? [{ volumeId: 'vol-1', target: '/data', readOnly: false }] : [] });
      await s.insertContainer(container(id, over));
    }
    await s.insertVm({ ...vm('plain'), nodeId: 'node-dead', state: 'ready' });
    assert.deepEqual(await s.markNodesLost(2000, 3000), [{ node: 'node-dead', vms: ['ctr-done', 'ctr-move', 'ctr-no', 'ctr-user', 'ctr-vol', 'plain'], pulls: [] }]);
    const started: string[] = [];
    const takeover = (nodeId: string, octet: number) =>
      new Takeover({
        store: s, nodeId, log,
        leaseAddress: async (id) => s.assignIp(id, () => `10.0.${octet}.2`),
        start: async (id) => void started.push(`${nodeId}:${id}`),
      });
    const [a, b] = await Promise.all([takeover('node-a', 1).sweep(), takeover('node-b', 2).sweep()]);
    assert.deepEqual([...a, ...b], ['ctr-move'], 'exactly one node took it');
    assert.equal(started.length, 1);
    const winner = a.length ? 'node-a' : 'node-b';
    assert.deepEqual(started, [`${winner}:ctr-move`]);
    const moved = (await s.getVm('ctr-move'))!;
    assert.equal(moved.nodeId, winner);
    assert.equal(moved.state, 'stopped', 'claimed (the start is the node\'s, here recorded only)');
    assert.equal(moved.ip, winner === 'node-a' ? '10.0.1.2' : '10.0.2.2', "an address from the new node's subnet");
    assert.match(moved.stateReason ?? '', /its node node-dead was lost: started on node node-/);
    assert.equal((await s.getVm('ctr-vol'))?.stateReason, STAYS_LOST_VOLUMES);
    for (const id of ['ctr-vol', 'ctr-no', 'ctr-user', 'ctr-done', 'plain']) {
      const v = (await s.getVm(id))!;
      assert.equal(v.state, 'lost', id);
      assert.equal(v.nodeId, 'node-dead', id);
    }
    assert.deepEqual(await takeover('node-a', 1).sweep(), [], 'nothing left to take');
  });
});
