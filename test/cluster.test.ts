// A kiln node on a real PostgreSQL (started by the test): it registers and heartbeats its
// capacity report; SIGKILLed, its fence watchdog kills its VMM (and removes the tap and the
// nftables table) before the deadline, it is marked lost by another member's sweep within the
// deadline and its VM with it; restarted, it rejoins as itself (new incarnation) and the lost VM is
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
import { NodeMember, REJOIN_REASON, fenceAfterMs } from '../src/cluster/node-member.ts';
import { PgStore } from '../src/store/pg/pg-store.ts';
import { cloneNetnsName } from '../src/net/clone-netns.ts';
import { tapName } from '../src/net/network-manager.ts';
import { NFT_FAMILY, tableName } from '../src/net/ruleset.ts';
import * as ip from '../src/tools/ip.ts';
import { nftTableExists } from '../src/tools/nft.ts';
import { fenceWatchdogPid, startKilnd, vmmPids, type TestDaemon } from './helpers/kilnd.ts';
import { CLUSTER_TIMING, postgresPerFile } from './helpers/postgres.ts';
import { until } from './helpers/until.ts';

const { heartbeatMs: HEARTBEAT_MS, lostAfterMs: LOST_AFTER_MS } = CLUSTER_TIMING;
const FENCE_AFTER_MS = fenceAfterMs(HEARTBEAT_MS, LOST_AFTER_MS);
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
    const watchdog = await fenceWatchdogPid(stateDir);
    assert.ok(watchdog, 'a node runs a fence watchdog');
    const tap = tapName(vm.id);
    assert.ok(await ip.linkExists(tap), 'the running VM has its tap');
    await d.kill();
    const killedAt = Date.now();
    // kilnd is dead, so only its watchdog can fence: the VMM, its tap and kiln's nftables table
    // go within the fence deadline (counted from the last heartbeat, at most one before the kill),
    // before the cluster marks the node lost.
    await until('the watchdog killed the VMM', async () => ((await vmmPids(stateDir)).length === 0 ? true : null), FENCE_AFTER_MS + 5_000, 20);
    await until('the tap and table removed', async () => (!(await ip.linkExists(tap)) && !(await nftTableExists(NFT_FAMILY, tableName(d.network.bridge))) ? true : null), 5_000, 20);
    assert.deepEqual((await ip.listNetns()).filter((n) => n === cloneNetnsName(vm.id)), [], 'no namespace left');
    await until('the watchdog exited', async () => ((await fenceWatchdogPid(stateDir)) === null ? true : null), 5_000, 20);
    const lost = await until('n1 marked lost', async () => ((await store.getNode(nodeId))?.state === 'lost' ? store.getNode(nodeId) : null), LOST_AFTER_MS * 3, 50);
    const detectedMs = Date.now() - killedAt;
    assert.ok(detectedMs <= LOST_AFTER_MS + 3 * HEARTBEAT_MS + 500, `lost after ${detectedMs} ms (deadline ${LOST_AFTER_MS} ms)`);
    assert.ok(lost!.lostAt! - lost!.heartbeatAt >= LOST_AFTER_MS, 'not before the deadline');
    const lostVm = (await store.getVm(vm.id))!;
    assert.equal(lostVm.state, 'lost', 'its VM is lost, not silently ready');
    assert.match(lostVm.stateReason ?? '', new RegExp(nodeId));
    assert.equal((await store.getNode('node-sweeper'))?.state, 'ready', 'the sweeper did not mark itself');
    // When the watchdog decided (its log), against the store's record of the last heartbeat and the loss.
    const logLines = (await fs.readFile(path.join(stateDir, 'fence-watchdog.log'), 'utf8')).split('\n');
    const decided = logLines.find((l) => l.includes('"fencing: '));
    const done = logLines.find((l) => l.includes('"fenced: '));
    assert.ok(decided && done, 'the watchdog logged its fence');
    const fencedAt = (JSON.parse(decided) as { time: number }).time;
    assert.deepEqual((JSON.parse(done) as { killed: string[] }).killed, [vm.id]);
    const sinceBeat = fencedAt - lost!.heartbeatAt;
    assert.ok(sinceBeat > FENCE_AFTER_MS && sinceBeat <= FENCE_AFTER_MS + 1_000, `fenced ${sinceBeat} ms after the last heartbeat (deadline ${FENCE_AFTER_MS} ms)`);
    assert.ok(fencedAt < lost!.lostAt!, `fenced (${fencedAt}) before the node was marked lost (${lost!.lostAt})`);
    assert.deepEqual(await vmmPids(stateDir), [], 'still no VMM: a dead kilnd\'s VMs stay fenced');

    d = await startKilnd({ stateDir, serveArgs, env, network: d.network });
    const back = (await store.getNode(nodeId))!;
    assert.equal(back.state, 'ready');
    assert.equal(back.incarnation, 2, 'rejoined as itself, a new incarnation');
    const settled = await d.client.getVm(vm.id);
    assert.equal(settled.state, 'stopped');
    assert.equal((await store.getVm(vm.id))?.stateReason, REJOIN_REASON);
    assert.deepEqual(await vmmPids(stateDir), [], 'its VMM was stopped: the lost VM does not run twice');
    const next = await fenceWatchdogPid(stateDir);
    assert.ok(next && next !== watchdog, 'the restarted kilnd runs a new fence watchdog');
    await until('heartbeats resume', async () => ((await store.getNode(nodeId))!.heartbeatAt > back.heartbeatAt ? true : null), 5_000, 50);
    assert.equal((await store.getNode(nodeId))?.state, 'ready');
  } finally {
    await other.stop();
    await d.dispose();
    await store.close();
  }
});
