// A cluster on one machine: a real PostgreSQL (started by the test), three kilnd nodes (each
// with its own bridge and subnet) and one `kiln serve --role api`, every one a separate
// process. Six VMs created through the API spread evenly by free capacity; exec and logs
// work through the API for VMs on every node; a SIGKILLed node is lost, the API answers for
// its VMs with KILN_ERR_NODE_UNAVAILABLE and places new VMs only on the others.
// Boots seven VMs: run under `flock /tmp/kiln-vm.lock`.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { test } from 'node:test';
import { KilnApiError } from '../src/sdk/client.ts';
import { PgStore } from '../src/store/pg/pg-store.ts';
import { startKilnd, type TestDaemon } from './helpers/kilnd.ts';
import { CLUSTER_TIMING, postgresPerFile } from './helpers/postgres.ts';
import { until } from './helpers/until.ts';

const { heartbeatMs: HEARTBEAT_MS, lostAfterMs: LOST_AFTER_MS } = CLUSTER_TIMING;
const newDatabase = postgresPerFile();

test('through one API: creates spread over three nodes by capacity, exec and logs reach every node, a lost node is routed around', async () => {
  const url = await newDatabase();
  const store = await PgStore.open(url);
  const token = randomBytes(24).toString('hex');
  const env = { KILN_API_TOKEN: token, KILN_NODE_HEARTBEAT_MS: String(HEARTBEAT_MS), KILN_NODE_LOST_AFTER_MS: String(LOST_AFTER_MS) };
  const nodes: TestDaemon[] = [];
  let api: TestDaemon | null = null;
  try {
    // One after the other: the first imports the default image, the others find it.
    for (const name of ['n1', 'n2', 'n3']) {
      nodes.push(await startKilnd({ serveArgs: ['--store', url, '--role', 'node', '--node-name', name, '--accel', process.env.KILN_ACCEL ?? 'tcg'], env }));
    }
    // K=3: every create compares all three nodes, so the spread is exact, not just likely.
    api = await startKilnd({ serveArgs: ['--store', url, '--role', 'api'], env: { ...env, KILN_PLACEMENT_K: '3' } });
    const c = api.client;
    const listed = (await (await c.request('GET', '/v1/nodes')).json()) as { name: string; state: string }[];
    assert.deepEqual(listed.map((n) => [n.name, n.state]), [['n1', 'ready'], ['n2', 'ready'], ['n3', 'ready']]);

    const vms = [];
    for (let i = 0; i < 6; i++) vms.push(await c.createVm({ name: `c${i}`, memory_mib: 128 }, { wait: true }));
    assert.ok(vms.every((v) => v.state === 'ready'));
    const nodeOf = new Map<string, string>();
    const byId = new Map((await store.listNodes()).map((n) => [n.id, n.name]));
    for (const v of vms) nodeOf.set(v.id, byId.get((await store.getVm(v.id))!.nodeId!)!);
    const spread = ['n1', 'n2', 'n3'].map((n) => [...nodeOf.values()].filter((x) => x === n).length);
    assert.deepEqual(spread, [2, 2, 2], `placement by free capacity: ${JSON.stringify([...nodeOf])}`);

    for (const name of ['n1', 'n2', 'n3']) {
      const id = [...nodeOf].find(([, n]) => n === name)![0];
      const r = await c.exec(id, { cmd: ['/bin/sh', '-c', 'echo from-$(hostname)'] });
      assert.equal(r.exit_code, 0);
      assert.match(r.stdout, /^from-/, `exec through the API on ${name}`);
      assert.match(await c.logs(id), /kiln default image/, `logs through the API on ${name}`);
      assert.equal((await c.getVm(id)).id, id);
    }
    const all = await c.listVms();
    assert.equal(all.length, 6, 'the list is every node’s');

    const victim = nodes[2]!;
    await victim.kill();
    await until('n3 lost', async () => ((await store.listNodes()).find((n) => n.name === 'n3')?.state === 'lost' ? true : null), LOST_AFTER_MS * 4, 50);
    const onVictim = [...nodeOf].filter(([, n]) => n === 'n3').map(([id]) => id);
    for (const id of onVictim) assert.equal((await store.getVm(id))?.state, 'lost');
    await assert.rejects(c.getVm(onVictim[0]!), (e: KilnApiError) => e.status === 503 && e.code === 'KILN_ERR_NODE_UNAVAILABLE');
    const placed = await c.createVm({ name: 'after-loss', memory_mib: 128 }, { wait: true });
    const where = byId.get((await store.getVm(placed.id))!.nodeId!);
    assert.notEqual(where, 'n3', 'a lost node gets no new VM');
    await c.deleteVm(placed.id);
    for (const [id, n] of nodeOf) if (n !== 'n3') await c.deleteVm(id);
    assert.deepEqual((await c.listVms()).map((v) => v.id), [], 'deletes went through the API to each node');
  } finally {
    await api?.dispose();
    for (const d of nodes) await d.dispose();
    await store.close();
  }
});
