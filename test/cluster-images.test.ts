// Image files across cluster nodes that share no disk: a real PostgreSQL, two kilnd nodes each
// in its own network namespace with its own state dir. An image imported on n1 exists as a
// file only there; a VM created on n2 with it makes n2 fetch the file from n1 (node to node,
// the cluster token, streamed, verified against the sha256 n1 recorded) as the VM's
// image.fetch step, once for two VMs created together, and the VMs run. Each node builds its
// own template of it; a snapshot taken on n1 is refused on n2. A copy tampered with
// on n1 is refused (KILN_ERR_DIGEST_MISMATCH) and leaves no file on n2; n2 SIGKILLed in the
// middle of a transfer leaves a temporary file that its restart removes, and nothing else.
// Boots VMs: run under `flock /tmp/kiln-vm.lock`.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { buildBusyboxTree } from '../src/image/default-image.ts';
import { FETCH_PREFIX } from '../src/image/image-fetch.ts';
import { PgStore } from '../src/store/pg/pg-store.ts';
import { startKilnd, waitForState, type TestDaemon } from './helpers/kilnd.ts';
import { createNetns, type TestNetns } from './helpers/netns.ts';
import { CLUSTER_TIMING, postgresPerFile } from './helpers/postgres.ts';
import { until } from './helpers/until.ts';

const newDatabase = postgresPerFile();
const PATH_ENV = { PATH: '/usr/sbin:/usr/bin:/sbin:/bin' };
const SLEEP = ['/bin/sh', '-c', 'sleep 3600'];

/** A busybox tree with a unique marker and 4 MiB of random bytes (a transfer of many chunks). */
async function makeTree(root: string, name: string): Promise<string> {
  const dir = path.join(root, name);
  await fs.mkdir(dir, { recursive: true });
  await buildBusyboxTree(dir);
  await fs.writeFile(path.join(dir, 'marker'), `${name} ${randomBytes(8).toString('hex')}\n`);
  await fs.writeFile(path.join(dir, 'noise'), randomBytes(4 << 20));
  return dir;
}

/** Entries of a node's images dir: the image directories and any temporary fetch files. */
const imagesDir = (n: TestDaemon) => path.join(n.stateDir, 'images');
const entries = async (n: TestDaemon) => fs.readdir(imagesDir(n)).catch(() => [] as string[]);

test('a node fetches an image file it lacks from the node that holds it, verified; a tampered copy is refused; a crash mid-transfer leaves nothing', async (t) => {
  const url = await newDatabase();
  const store = await PgStore.open(url);
  const token = randomBytes(24).toString('hex');
  const trees = await fs.mkdtemp(path.join(os.tmpdir(), 'kiln-climg-'));
  const env = {
    KILN_API_TOKEN: token, KILN_ALLOWED_ROOTS: trees,
    KILN_NODE_HEARTBEAT_MS: String(CLUSTER_TIMING.heartbeatMs * 3), KILN_NODE_LOST_AFTER_MS: String(30_000),
    KILN_FN_POOL_SIZE: '0', KILN_FN_RESTORE: '0',
  };
  const spaces: TestNetns[] = [];
  const nodes: (TestDaemon | null)[] = [null, null];
  const startNode = (i: number, extraEnv: Record<string, string> = {}, from?: TestDaemon) =>
    startKilnd({
      serveArgs: ['--store', url, '--role', 'node', '--node-name', `n${i + 1}`, '--accel', process.env.KILN_ACCEL ?? 'tcg'],
      env: { ...env, ...extraEnv }, netns: spaces[i]!.name, listen: `${spaces[i]!.nsIp}:0`,
      ...(from ? { stateDir: from.stateDir, network: from.network } : {}),
    });
  try {
    for (let i = 0; i < 2; i++) {
      spaces.push(await createNetns());
      nodes[i] = await startNode(i);
    }
    const [n1, n2] = nodes as [TestDaemon, TestDaemon];
    assert.notEqual(n1.stateDir, n2.stateDir, 'no shared state dir');
    const id1 = (await fs.readFile(path.join(n1.stateDir, 'node-id'), 'utf8')).trim();
    const id2 = (await fs.readFile(path.join(n2.stateDir, 'node-id'), 'utf8')).trim();
    const copyOf = async (imageId: string, nodeId: string) => (await store.listImageCopies({ imageId, nodeId }))[0] ?? null;

    // ---- fetched from n1, verified, one transfer for two VMs --------------------------------
    const img = await n1.client.importImagePath({ name: 'fetched', path: await makeTree(trees, 'fetched'), cmd: ['/bin/sh', '-c', 'cat /marker; sleep 3600'], env: PATH_ENV });
    const held = (await copyOf(img.id, id1))!;
    assert.ok(held && held.state === 'ready' && held.path.startsWith(n1.stateDir), `n1 recorded its copy: ${JSON.stringify(held)}`);
    assert.equal(held.sha256, img.digest, "an import's copy hashes to the image's digest");
    assert.equal(await copyOf(img.id, id2), null, 'n2 has no copy yet');
    await until('the heartbeats report n1 holding the image and n2 not', async () => {
      const ns = await store.listNodes();
      const rep = (id: string) => ns.find((n) => n.id === id)!.capacity.images.includes(img.id);
      return rep(id1) && !rep(id2);
    }, 10_000, 100);

    const tFetch = Date.now();
    const made = await Promise.all(['a', 'b'].map((x) => n2.client.createVm({ name: `on-n2-${x}`, image: 'fetched', memory_mib: 128 })));
    const vms = await Promise.all(made.map((v) => waitForState(n2.client, v.id, ['ready', 'failed'], 240_000)));
    assert.deepEqual(vms.map((v) => [v.name, v.state, v.state_reason]), [['on-n2-a', 'ready', null], ['on-n2-b', 'ready', null]]);
    t.diagnostic(`two VMs on n2 ready, the image fetched from n1: ${Date.now() - tFetch} ms`);
    const got = (await copyOf(img.id, id2))!;
    assert.equal(got.state, 'ready');
    assert.ok(got.path.startsWith(n2.stateDir + '/'), `n2's copy is in n2's state dir: ${got.path}`);
    assert.equal(got.sha256, held.sha256);
    assert.equal(got.sizeBytes, held.sizeBytes);
    assert.equal((await fs.stat(got.path)).size, held.sizeBytes);
    const fetched = (await store.listEvents({ limit: 10_000 })).filter((e) => e.type === 'image.fetched' && e.data.id === img.id);
    assert.equal(fetched.length, 1, `one fetch for two VMs: ${JSON.stringify(fetched.map((e) => e.data))}`);
    assert.equal(fetched[0]!.data.from, 'n1');
    t.diagnostic(`image.fetch: ${fetched[0]!.data.bytes} bytes from n1 in ${fetched[0]!.data.ms} ms (load ${(await fs.readFile('/proc/loadavg', 'utf8')).split(' ').slice(0, 3).join(' ')})`);
    for (const v of vms) {
      const phases = (await store.listPhases(v.id, 1)).map((p) => p.name);
      assert.ok(phases.includes('image.fetch'), `the timeline shows the fetch: ${phases}`);
      await until(`the guest of ${v.name} runs the image's command`, async () => (await n2.client.logs(v.id)).includes('fetched '), 60_000, 200);
    }
    await until("n2's heartbeat reports its copy", async () => (await store.getNode(id2))!.capacity.images.includes(img.id), 10_000, 100);
    assert.deepEqual((await entries(n2)).filter((e) => e.startsWith(FETCH_PREFIX)), [], 'no temporary file left');

    // ---- templates are per node -----------------------------------------------------------
    // Each node builds its own (its key includes the node) from its own copy of the image, in
    // its own state dir; a clone on n2 of n1's template id is restored from n2's; n1's snapshot
    // itself is refused on n2 (its files are n1's).
    const tpl1 = await n1.client.createTemplate('fetched');
    const tpl2 = await n2.client.createTemplate('fetched');
    assert.equal(tpl1.state, 'ready');
    assert.equal(tpl2.state, 'ready');
    assert.notEqual(tpl2.id, tpl1.id, "n2 built its own template, not n1's");
    const snapDir = (n: TestDaemon, id: string) => fs.stat(path.join(n.stateDir, 'snapshots', id)).then(() => true, () => false);
    assert.ok(await snapDir(n1, tpl1.snapshot!) && !(await snapDir(n2, tpl1.snapshot!)), "n1's template snapshot is on n1 only");
    assert.ok(await snapDir(n2, tpl2.snapshot!) && !(await snapDir(n1, tpl2.snapshot!)), "n2's template snapshot is on n2 only");
    const clone = await n2.client.createVm({ template: tpl1.id, name: 'clone-on-n2' }, { wait: true, timeoutMs: 240_000 });
    assert.equal(clone.state, 'ready');
    assert.equal(await store.snapshotOfVm(clone.id), tpl2.snapshot, "restored from n2's own template");
    await assert.rejects(n2.client.createVm({ snapshot: tpl1.snapshot!, name: 'foreign' }),
      (e: Error & { code?: string }) => e.code === 'KILN_ERR_SNAPSHOT_NOT_FOUND' && /another node/.test(e.message));
    await n2.client.deleteVm(clone.id);

    // ---- a tampered copy on n1 is refused --------------------------------------------------
    const bad = await n1.client.importImagePath({ name: 'tampered', path: await makeTree(trees, 'tampered'), cmd: SLEEP, env: PATH_ENV });
    const badCopy = (await copyOf(bad.id, id1))!;
    const fh = await fs.open(badCopy.path, 'r+');
    try {
      const at = Math.floor(badCopy.sizeBytes / 2);
      const b = Buffer.alloc(1);
      await fh.read(b, 0, 1, at);
      b[0] = b[0]! ^ 0xff;
      await fh.write(b, 0, 1, at);
    } finally {
      await fh.close();
    }
    const before = await entries(n2);
    const refused = await waitForState(n2.client, (await n2.client.createVm({ name: 'on-n2-bad', image: 'tampered', memory_mib: 128 })).id, ['ready', 'failed'], 120_000);
    assert.equal(refused.state, 'failed');
    assert.match(refused.state_reason ?? '', /^KILN_ERR_DIGEST_MISMATCH: /);
    assert.equal(await copyOf(bad.id, id2), null, 'no copy recorded on n2');
    assert.deepEqual(await entries(n2), before, 'no file left on n2 (neither the image dir nor a temporary)');
    assert.ok((await store.listEvents({ limit: 10_000 })).some((e) => e.type === 'image.fetch_failed' && e.data.id === bad.id));

    // ---- n2 killed in the middle of a transfer ---------------------------------------------
    const big = await n1.client.importImagePath({ name: 'interrupted', path: await makeTree(trees, 'interrupted'), cmd: SLEEP, env: PATH_ENV });
    await n2.stop();
    nodes[1] = await startNode(1, { KILN_FAILPOINTS: 'image.fetch:partial=crash' }, n2);
    const crashing = nodes[1];
    await crashing.client.createVm({ name: 'on-n2-crash', image: 'interrupted', memory_mib: 128 }).catch(() => {});
    await until('n2 crashed at the failpoint', async () => crashing.proc.exitCode !== null || crashing.proc.signalCode !== null, 60_000, 50);
    assert.match(crashing.output(), /kiln failpoint image\.fetch:partial: crashing/);
    const partial = (await entries(crashing)).filter((e) => e.startsWith(FETCH_PREFIX));
    assert.equal(partial.length, 1, `a partial transfer on disk at the crash: ${await entries(crashing)}`);
    const partialSize = (await fs.stat(path.join(imagesDir(crashing), partial[0]!))).size;
    assert.ok(partialSize > 0 && partialSize < (await copyOf(big.id, id1))!.sizeBytes, `partial: ${partialSize} bytes`);
    assert.equal((await copyOf(big.id, id2))?.state, 'fetching', "the store says n2's copy was being fetched");
    nodes[1] = await startNode(1, {}, crashing);
    const n2b = nodes[1];
    assert.deepEqual((await entries(n2b)).filter((e) => e.startsWith(FETCH_PREFIX) || e === big.id), [], 'the restart removed the partial file');
    assert.equal(await copyOf(big.id, id2), null, 'and the unfinished copy row');
    // The VM whose boot the crash cut is failed by the restart; a new one fetches afresh.
    const again = await waitForState(n2b.client, (await n2b.client.createVm({ name: 'on-n2-again', image: 'interrupted', memory_mib: 128 })).id, ['ready', 'failed'], 240_000);
    assert.equal(again.state, 'ready', again.state_reason ?? '');
    assert.equal((await copyOf(big.id, id2))?.sha256, (await copyOf(big.id, id1))?.sha256);
  } finally {
    for (const n of nodes) await n?.dispose().catch((e) => t.diagnostic(`dispose: ${(e as Error).message}`));
    for (const s of spaces) await s.dispose().catch((e) => t.diagnostic(`netns: ${(e as Error).message}`));
    await store.close();
    await fs.rm(trees, { recursive: true, force: true });
  }
});
