// A kiln node on a real PostgreSQL (started by the test): it registers and heartbeats its
// capacity report; SIGKILLed, it is marked lost by another member's sweep within the deadline
// and its VM with it; restarted, it rejoins as itself (new incarnation) and the lost VM is
// recorded stopped with its VMM gone: nothing of it runs twice. The other member is the
// real NodeMember code in this process, on its own connection to the same database.
// Boots one VM: run under `flock /tmp/kiln-vm.lock`.
import assert from 'node:assert/strict';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import pino from 'pino';
import { capacity } from '../src/store/conformance.ts';
import { NodeMember, REJOIN_REASON } from '../src/cluster/node-member.ts';
import { PgStore } from '../src/store/pg/pg-store.ts';
import { startKilnd, vmmPids, type TestDaemon } from './helpers/kilnd.ts';
import { CLUSTER_TIMING, postgresPerFile } from './helpers/postgres.ts';
import { until } from './helpers/until.ts';

const { heartbeatMs: HEARTBEAT_MS, lostAfterMs: LOST_AFTER_MS } = CLUSTER_TIMING;
const newDatabase = postgresPerFile();

test('a node registers with its capacity, is lost within the deadline when killed (its VM too), and rejoins without running it twice', async () => {
  const url = await newDatabase();
  const store = await PgStore.open(url);
  const stateDir = await fs.mkdtemp(path.join(os.tmpdir(), 'kiln-test-'));
  const serveArgs = ['--store', url, '--role', 'node', '--node-name', 'n1', '--accel', process.env.KILN_ACCEL ?? 'tcg'];
  const env = { KILN_NODE_HEARTBEAT_MS: String(HEARTBEAT_MS), KILN_NODE_LOST_AFTER_MS: String(LOST_AFTER_MS) };
  let d: TestDaemon = await startKilnd({ stateDir, serveArgs, env });
  const other = new NodeMember({
    store, nodeId: 'node-sweeper', name: 'sweeper', heartbeatMs: HEARTBEAT_MS, lostAfterMs: LOST_AFTER_MS,
    capacity: async () => capacity(), log: pino({ level: 'silent' }),
  });
  try {
    const nodeId = (await fs.readFile(path.join(stateDir, 'node-id'), 'utf8')).trim();
    const n1 = (await store.getNode(nodeId))!;
    assert.equal(n1.name, 'n1');
    assert.equal(n1.state, 'ready');
    assert.equal(n1.url, d.url, 'registered where it listens');
    assert.ok(n1.capacity.vcpus >= os.cpus().length && n1.capacity.memoryMib > 0, JSON.stringify(n1.capacity));
    assert.ok(n1.capacity.diskFreeBytes > 0);
    assert.equal(await store.leaseNodeSubnet(nodeId, () => null), null, 'an explicit KILN_CIDR wins: no subnet leased from the cluster range');
    const images = await d.client.listImages();
    assert.ok(images.some((i) => n1.capacity.images.includes(i.id)), 'reports the images it holds');
    const beat = await until('a later heartbeat', async () => {
      const n = await store.getNode(nodeId);
      return n && n.heartbeatAt > n1.heartbeatAt ? n : null;
    }, 5_000, 50);
    assert.ok(beat.heartbeatAt - n1.heartbeatAt < HEARTBEAT_MS * 5);

    const vm = await d.client.createVm({ name: 'on-n1' }, { wait: true });
    assert.equal(vm.state, 'ready');
    assert.equal((await store.getVm(vm.id))?.nodeId, nodeId, 'the VM row names its node');
    await until('the capacity report counts the VM', async () => ((await store.getNode(nodeId))!.capacity.vms === 1 ? true : null), 5_000, 50);

    await other.start('http://sweeper.invalid');
    await d.kill();
    const killedAt = Date.now();
    const lost = await until('n1 marked lost', async () => ((await store.getNode(nodeId))?.state === 'lost' ? store.getNode(nodeId) : null), LOST_AFTER_MS * 3, 50);
    const detectedMs = Date.now() - killedAt;
    assert.ok(detectedMs <= LOST_AFTER_MS + 3 * HEARTBEAT_MS + 500, `lost after ${detectedMs} ms (deadline ${LOST_AFTER_MS} ms)`);
    assert.ok(lost!.lostAt! - lost!.heartbeatAt >= LOST_AFTER_MS, 'not before the deadline');
    const lostVm = (await store.getVm(vm.id))!;
    assert.equal(lostVm.state, 'lost', 'its VM is lost, not silently ready');
    assert.match(lostVm.stateReason ?? '', new RegExp(nodeId));
    assert.equal((await store.getNode('node-sweeper'))?.state, 'ready', 'the sweeper did not mark itself');
    assert.equal((await vmmPids(stateDir)).length, 1, 'a dead kilnd leaves its VMM running (kiln VMs outlive kilnd)');

    d = await startKilnd({ stateDir, serveArgs, env, network: d.network });
    const back = (await store.getNode(nodeId))!;
    assert.equal(back.state, 'ready');
    assert.equal(back.incarnation, 2, 'rejoined as itself, a new incarnation');
    const settled = await d.client.getVm(vm.id);
    assert.equal(settled.state, 'stopped');
    assert.equal((await store.getVm(vm.id))?.stateReason, REJOIN_REASON);
    assert.deepEqual(await vmmPids(stateDir), [], 'its VMM was stopped: the lost VM does not run twice');
    await until('heartbeats resume', async () => ((await store.getNode(nodeId))!.heartbeatAt > back.heartbeatAt ? true : null), 5_000, 50);
    assert.equal((await store.getNode(nodeId))?.state, 'ready');
  } finally {
    await other.stop();
    await d.dispose();
    await store.close();
  }
});
