import assert from 'node:assert/strict';
import { test } from 'node:test';
import { capacity } from '../store/conformance.ts';
import type { NodeRecord } from '../store/store.ts';
import { headroom, place } from './placement.ts';

const node = (name: string, over: Partial<NodeRecord['capacity']> = {}, state: NodeRecord['state'] = 'ready'): NodeRecord => ({
  id: `node-${name}`, name, url: `http://${name}`, e2bUrl: null, state, incarnation: 1, capacity: capacity({ images: [], ...over }),
  registeredAt: 0, heartbeatAt: 0, lostAt: null,
});

/** Deterministic PRNG (mulberry32): placement is random by design, tests are not. */
function seeded(seed: number) {
  return () => {
    seed = (seed + 0x6d2b79f5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Places `n` VMs one after the other, committing each on its node as the heartbeat would report. */
function simulate(nodes: NodeRecord[], n: number, d: { vcpus: number; memoryMib: number }, k: number, random = seeded(7)) {
  const counts = new Map(nodes.map((x) => [x.name, 0]));
  for (let i = 0; i < n; i++) {
    const chosen = place(nodes, d, { k, random });
    if (!chosen) break;
    chosen.capacity.committedVcpus += d.vcpus;
    chosen.capacity.committedMemoryMib += d.memoryMib;
    counts.set(chosen.name, counts.get(chosen.name)! + 1);
  }
  return counts;
}

test('never places on a node that is lost or cannot fit the VM; null when none can', () => {
  const full = node('full', { committedVcpus: 8 });
  const lost = node('lost', {}, 'lost');
  const ok = node('ok', { memoryMib: 1024 });
  for (let i = 0; i < 50; i++) assert.equal(place([full, lost, ok], { vcpus: 1, memoryMib: 512 }, { k: 2, random: seeded(i) })?.name, 'ok');
  assert.equal(place([full, lost, ok], { vcpus: 1, memoryMib: 2048 }), null);
  assert.ok(headroom(full, { vcpus: 1, memoryMib: 1 }) < 0);
});

test('12 VMs on three equal nodes: exactly even when K covers them, within one of even with best of 2', () => {
  assert.deepEqual([...simulate([node('a'), node('b'), node('c')], 12, { vcpus: 1, memoryMib: 512 }, 3).values()], [4, 4, 4]);
  for (let seed = 1; seed <= 20; seed++) {
    const counts = [...simulate([node('a'), node('b'), node('c')], 12, { vcpus: 1, memoryMib: 512 }, 2, seeded(seed)).values()];
    assert.ok(Math.max(...counts) - Math.min(...counts) <= 2 && Math.min(...counts) >= 3, `seed ${seed}: ${counts}`);
  }
});

test('spread follows capacity: a node with twice the capacity takes about twice the VMs', () => {
  const big = node('big', { vcpus: 16, memoryMib: 16384 });
  const counts = simulate([big, node('s1'), node('s2')], 24, { vcpus: 1, memoryMib: 512 }, 3);
  assert.equal(counts.get('big'), 12, JSON.stringify([...counts]));
  assert.equal(counts.get('s1')! + counts.get('s2')!, 12);
});

test('image locality breaks near-ties, not real imbalance', () => {
  const cached = node('cached', { images: ['img-x'], committedMemoryMib: 512 });
  const empty = node('empty');
  assert.equal(place([cached, empty], { vcpus: 1, memoryMib: 256, imageId: 'img-x' }, { k: 2 })?.name, 'cached');
  const busy = node('busy', { images: ['img-x'], committedMemoryMib: 6144 });
  assert.equal(place([busy, empty], { vcpus: 1, memoryMib: 256, imageId: 'img-x' }, { k: 2 })?.name, 'empty');
});

test('other locality (an E2B template’s snapshot and clone pool) breaks near-ties like a cached image', () => {
  // Memory is the tighter resource on both (16 vCPUs): warm has one sandbox's 512 MiB less free.
  const warm = node('warm', { vcpus: 16, committedMemoryMib: 512 });
  const cold = node('cold', { vcpus: 16 });
  const local = new Set([warm.id]);
  assert.equal(place([warm, cold], { vcpus: 1, memoryMib: 512, local }, { k: 2 })?.name, 'warm');
  assert.equal(place([warm, cold], { vcpus: 1, memoryMib: 512 }, { k: 2 })?.name, 'cold', 'without it, the emptier node');
  const busy = node('busy', { vcpus: 16, committedMemoryMib: 6144 });
  assert.equal(place([busy, cold], { vcpus: 1, memoryMib: 512, local: new Set([busy.id]) }, { k: 2 })?.name, 'cold');
});

test('best of K samples: with K=1 placement is uniform over the nodes that fit', () => {
  const nodes = [node('a'), node('b'), node('c'), node('d')];
  const seen = new Map<string, number>();
  const random = seeded(3);
  for (let i = 0; i < 4000; i++) {
    const n = place(nodes, { vcpus: 1, memoryMib: 1 }, { k: 1, random })!.name;
    seen.set(n, (seen.get(n) ?? 0) + 1);
  }
  for (const [name, c] of seen) assert.ok(c > 850 && c < 1150, `${name}: ${c} of 4000`);
});
