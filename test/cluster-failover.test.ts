// A node's failure as the cluster handles it, with real PostgreSQL, two real kilnd nodes and
// real VMs. The nodes lease their VM subnets from one cluster range (no KILN_CIDR). Node n1
// reaches the database through a path the test can cut: cut, it fences itself (kills its
// VMMs) before the cluster's deadline; n2 marks it lost, starts n1's restart-policy container
// (no volumes) itself with an address from its own subnet (building its own copy of the image,
// which only n1 held), and leaves the one with a volume
// lost with the reason. A function deployed through n1 is served by n2 meanwhile (n2 loads
// its code from the store). The path restored, n1 rejoins: its lost VMs are recorded stopped,
// the moved container stays on n2 only, and n1 boots and serves the function again.
// Boots VMs: run under `flock /tmp/kiln-vm.lock`.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import fs from 'node:fs/promises';
import path from 'node:path';
import { REJOIN_REASON, fenceAfterMs } from '../src/cluster/node-member.ts';
import { STAYS_LOST_VOLUMES } from '../src/cluster/takeover.ts';
import { contains, parseSubnet } from '../src/net/ipv4.ts';
import { KilnApiError, type KilnClient } from '../src/sdk/client.ts';
import { PgStore } from '../src/store/pg/pg-store.ts';
import { expectApiError } from './helpers/api-errors.ts';
import { clusterEnv } from './helpers/cluster.ts';
import { startKilnd, testNetwork, vmmPids, type TestDaemon } from './helpers/kilnd.ts';
import { FENCE_TIMING, pgPath, startPostgres, type TestPostgres } from './helpers/postgres.ts';
import { until } from './helpers/until.ts';

const { heartbeatMs: HEARTBEAT_MS, lostAfterMs: LOST_AFTER_MS } = FENCE_TIMING;
const FENCE_AFTER_MS = fenceAfterMs(HEARTBEAT_MS, LOST_AFTER_MS);
const FUNCTION_CODE = 'def handler(event, context):\n    return {"echo": event}\n';
let pg: TestPostgres;

before(async () => {
  pg = await startPostgres();
});
after(async () => {
  await pg?.dispose();
});

/** Starts the VM, retrying only while the node still says it is fenced (the moment between its settling and unfencing). */
async function startWhenUnfenced(client: KilnClient, id: string) {
  const deadline = Date.now() + 10_000;
  for (;;) {
    try {
      return await client.startVm(id, { wait: true });
    } catch (e) {
      if (!(e instanceof KilnApiError && e.code === 'KILN_ERR_NODE_UNAVAILABLE') || Date.now() > deadline) throw e;
      await new Promise((r) => setTimeout(r, 50));
    }
  }
}

/** The time of kilnd's "fencing" log line (pino's epoch ms: the decision, before the kills), or null. */
function fencedAt(output: string): number | null {
  for (const line of output.split('\n')) {
    if (!line.includes('"fencing: no heartbeat')) continue;
    return (JSON.parse(line) as { time: number }).time;
  }
  return null;
}

test('per-node subnets from the cluster range; a node cut from the database fences itself, its restart-policy container moves, and it rejoins without running anything twice', async () => {
  const dbName = `kiln_failover_${process.pid}`;
  const url = await pg.createDatabase(dbName);
  const cutPath = await pgPath(pg);
  const store = await PgStore.open(url);
  // A random /24 of the test ranges, in /26s: n1 leases the first, n2 the second.
  const range = testNetwork().cidr;
  const args = (name: string, storeUrl: string) => ['--store', storeUrl, '--role', 'node', '--node-name', name, '--cluster-cidr', range, '--accel', process.env.KILN_ACCEL ?? 'tcg'];
  // One API token for the cluster (a node fetches image files from another with it); function
  // instances boot on demand only (no pool, no template builds): the VMM counts below are exact.
  const env = clusterEnv({ KILN_CIDR: '', KILN_NODE_SUBNET_PREFIX: '26', KILN_LOG_LEVEL: 'warn' });
  let n1: TestDaemon | null = null;
  let n2: TestDaemon | null = null;
  try {
    n1 = await startKilnd({ serveArgs: args('n1', cutPath.url(dbName)), env });
    n2 = await startKilnd({ serveArgs: args('n2', url), env });
    const id1 = (await fs.readFile(path.join(n1.stateDir, 'node-id'), 'utf8')).trim();
    const id2 = (await fs.readFile(path.join(n2.stateDir, 'node-id'), 'utf8')).trim();
    // The lease a node holds is what leaseNodeSubnet returns without picking.
    const none = () => null;
    const sub1 = await store.leaseNodeSubnet(id1, none);
    const sub2 = await store.leaseNodeSubnet(id2, none);
    const base = parseSubnet(range).network.split('.').slice(0, 3).join('.');
    assert.equal(sub1, `${base}.0/26`, 'n1 leased the first /26 of the range');
    assert.equal(sub2, `${base}.64/26`, 'n2 leased the next one');

    const plain = await n1.client.createVm({ name: 'plain' }, { wait: true });
    assert.ok(plain.ip && contains(parseSubnet(sub1!), plain.ip), `${plain.ip} is in n1's ${sub1}`);
    const mover = await n1.client.createContainer({ image: 'default', name: 'mover', cmd: ['sleep', '3600'], restart: 'always' }, { wait: true });
    await n1.client.createVolume('pinned-data', 16);
    const pinned = await n1.client.createContainer(
      { image: 'default', name: 'pinned', cmd: ['sleep', '3600'], restart: 'always', volumes: [{ volume: 'pinned-data', target: '/data' }] },
      { wait: true },
    );
    assert.equal(mover.state, 'running');
    assert.equal(pinned.state, 'running');
    await n1.client.createFunction({ name: 'echo', runtime: 'python', code: FUNCTION_CODE, handler: 'handler', memory_mb: 128 });
    assert.deepEqual((await n1.client.invoke('echo', { on: 'n1' })).result, { echo: { on: 'n1' } });
    assert.equal((await vmmPids(n1.stateDir)).length, 4, 'three VMs and a function instance');
    // Image files are per node: n2 has never booted the default image nor the python runtime's,
    // and with n1 cut off no peer holds them. It builds its own copies (from busybox, from the
    // recipe's cache) when it takes the container over and serves the function.
    const images = (await store.listImages()).filter((i) => i.name === 'default' || i.name.startsWith('kiln-runtime-python'));
    assert.equal(images.length, 2, `the default and python runtime images: ${images.map((i) => i.name)}`);
    assert.deepEqual(await store.listImageCopies({ nodeId: id2 }), [], 'n2 holds no image file yet');
    const beforeCut = (await store.getNode(id1))!;

    cutPath.cut();
    const cutAt = Date.now();
    const goneAt = await until("n1's VMMs killed by its fence", async () => ((await vmmPids(n1!.stateDir)).length === 0 ? Date.now() : null), LOST_AFTER_MS * 3, 20);
    const lost = await until('n1 marked lost by n2', async () => {
      const n = await store.getNode(id1);
      return n?.state === 'lost' ? n : null;
    }, LOST_AFTER_MS * 3, 20);
    const fenced = fencedAt(n1.output());
    assert.ok(fenced !== null, `n1 logged its fence:\n${n1.output().slice(-2000)}`);
    assert.ok(fenced - cutAt >= FENCE_AFTER_MS - 2 * HEARTBEAT_MS, `not fenced at once (${fenced - cutAt} ms after the cut)`);
    assert.ok(fenced < lost.lostAt!, `n1 fenced (${fenced - lost.heartbeatAt} ms after its last heartbeat) before the cluster marked it lost (${lost.lostAt! - lost.heartbeatAt} ms)`);
    assert.ok(goneAt - cutAt <= LOST_AFTER_MS + 1_000, `VMMs gone ${goneAt - cutAt} ms after the cut`);
    assert.equal(lost.incarnation, beforeCut.incarnation);
    assert.equal((await store.getVm(plain.id))?.state, 'lost');

    // n2 takes the restart-policy container over: its row, its address, its VMM are n2's now.
    const moved = await until('the container started on n2', async () => {
      const vm = await store.getVm(mover.id);
      return vm?.nodeId === id2 && vm.state === 'ready' ? vm : null;
    }, 180_000, 100).catch(async (e) => {
      const row = await store.getVm(mover.id);
      throw new Error(`${(e as Error).message}; the row: ${JSON.stringify({ state: row?.state, node: row?.nodeId, reason: row?.stateReason, ip: row?.ip })}; n2:\n${n2!.output().slice(-3000)}`);
    });
    assert.ok(moved.ip && contains(parseSubnet(sub2!), moved.ip), `${moved.ip} is in n2's ${sub2}`);
    const movedEvent = (await store.listEvents({ vmId: mover.id })).find((e) => e.type === 'container.moved');
    assert.deepEqual(movedEvent?.data, { from: id1, to: id2 }, 'the move is recorded');
    const onN2 = await n2.client.getContainer(mover.id);
    assert.equal(onN2.state, 'running');
    assert.equal(onN2.restart_count, 1, 'counted as one restart of its policy');
    assert.equal((await vmmPids(n2.stateDir)).length, 1);
    const stuck = (await store.getVm(pinned.id))!;
    assert.equal(stuck.state, 'lost', 'a container with a volume does not move');
    assert.equal(stuck.nodeId, id1);
    await until('the reason it stays lost', async () => (await store.getVm(pinned.id))?.stateReason === STAYS_LOST_VOLUMES, 10_000, 50);
    assert.deepEqual(await vmmPids(n1.stateDir), [], 'n1 runs nothing while cut off');
    // n1's function, served by n2 (which never saw its deploy) while n1 is gone.
    assert.deepEqual((await n2.client.invoke('echo', { on: 'n2' })).result, { echo: { on: 'n2' } });
    assert.ok(await fs.stat(path.join(n2.stateDir, 'functions/echo/v1.code')), "n2 loaded the code from the store");
    assert.equal((await vmmPids(n2.stateDir)).length, 2, 'the moved container and a function instance');
    for (const image of images) {
      const copy = (await store.listImageCopies({ imageId: image.id, nodeId: id2 }))[0];
      assert.equal(copy?.state, 'ready', `n2 holds its own copy of ${image.name}`);
      assert.ok(copy.path.startsWith(n2.stateDir + path.sep), copy.path);
    }
    const built = (await store.listEvents({ limit: 100_000 })).filter((e) => e.type === 'image.fetched' && images.some((i) => i.id === (e.data as { id: string }).id));
    assert.deepEqual(built.map((e) => (e.data as { from: string }).from), ['local build', 'local build'], 'built on n2, as no ready node held a copy');

    cutPath.restore();
    const back = await until('n1 rejoined', async () => {
      const n = await store.getNode(id1);
      return n?.state === 'ready' && n.incarnation > beforeCut.incarnation ? n : null;
    }, 30_000, 50);
    assert.equal(back.incarnation, beforeCut.incarnation + 1);
    assert.equal(await store.leaseNodeSubnet(id1, none), sub1, 'n1 keeps its subnet');
    for (const id of [plain.id, pinned.id]) {
      // The rejoin registers first, then settles its VMs.
      const vm = await until(`${id} settled`, async () => {
        const v = await store.getVm(id);
        return v?.state === 'stopped' ? v : null;
      }, 10_000, 50);
      assert.equal(vm.state, 'stopped', `${vm.name} recorded stopped`);
      assert.equal(vm.stateReason, REJOIN_REASON);
      assert.equal(vm.nodeId, id1);
    }
    const still = (await store.getVm(mover.id))!;
    assert.equal(still.nodeId, id2, 'the moved container stays on n2');
    assert.equal(still.state, 'ready');
    await expectApiError(n1.client.getVm(mover.id), 404, 'KILN_ERR_VM_NOT_FOUND');
    assert.deepEqual(await vmmPids(n1.stateDir), [], 'nothing runs twice on n1');
    assert.equal((await vmmPids(n2.stateDir)).length, 2);
    // Unfenced (right after the settling): n1 boots again.
    const again = await startWhenUnfenced(n1.client, plain.id);
    assert.equal(again.state, 'ready');
    assert.equal(again.ip, plain.ip, 'its address is kept on its node');
    assert.equal((await vmmPids(n1.stateDir)).length, 1);
    // Its function instance died with the fence: the next call starts a new one.
    const rerun = await n1.client.invoke('echo', { on: 'n1 again' });
    assert.deepEqual(rerun.result, { echo: { on: 'n1 again' } });
    assert.equal(rerun.cold, true);
    await until('heartbeats resume', async () => ((await store.getNode(id1))!.heartbeatAt > back.heartbeatAt ? true : null), 5_000, 50);
  } finally {
    await n2?.dispose();
    await n1?.dispose();
    await cutPath.close();
    await store.close();
  }
});
