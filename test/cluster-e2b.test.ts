// E2B's API through the cluster's API role (issue #17, gap cle2b): a real PostgreSQL, two kilnd
// nodes each in its own network namespace with its own E2B listener (advertised in its node
// row), and `kiln serve --role api --e2b-listen` in the root namespace. The official `e2b` SDK,
// configured only by E2B_API_URL / E2B_SANDBOX_URL / E2B_API_KEY pointing at the API role, does
// everything: creates (the second placed beside the first by template locality, a third pinned
// to the other node), commands.run and files.write/read (envd relayed to the owner node), a
// list with sandboxes of both nodes, getInfo/setTimeout/pause/connect, kill. Then one node is
// SIGKILLed: once it is lost its sandbox answers as E2B's does for one that is gone
// (NotFoundError, kill() false, not running, not listed) while the other node's still works.
// Boots a template's golden VM and three clones: run under `flock /tmp/kiln-vm.lock`.
import assert from 'node:assert/strict';
import fs from 'node:fs/promises';
import path from 'node:path';
import { test } from 'node:test';
import { NotFoundError, Sandbox } from 'e2b';
import { PgStore } from '../src/store/pg/pg-store.ts';
import { BACKEND_SKIP } from './helpers/backend.ts';
import { startKilnd, type TestDaemon } from './helpers/kilnd.ts';
import { BASE_RECIPE } from '../src/e2b/base-template.ts';
import { assertClusterGone, clusterEnv, prebuildRecipes, startClusterNode, stopCluster } from './helpers/cluster.ts';
import { createNetns, type TestNetns } from './helpers/netns.ts';
import { FENCE_TIMING, postgresPerFile } from './helpers/postgres.ts';
import { until } from './helpers/until.ts';

// Sandboxes are snapshot clones: QEMU (as test/e2b.test.ts).
const skip = BACKEND_SKIP || (process.env.KILN_BACKEND === 'firecracker' ? 'KILN_BACKEND=firecracker: sandbox clones are exercised on QEMU' : false);
// A template build (boot + snapshot) under TCG on a loaded machine: slow heartbeats must not fence.
const { lostAfterMs: LOST_AFTER_MS } = FENCE_TIMING;
const NODES = ['e1', 'e2'] as const;
/** The first create builds `base`'s template (image from the recipe cache, one boot, a snapshot). */
const FIRST_CREATE_MS = 600_000;
/** Every sandbox outlives the test (E2B's default of 5 min is shorter than a slow run). */
const LIFE_MS = 1_800_000;
const newDatabase = postgresPerFile();
const stamp = (t0: number) => `${((Date.now() - t0) / 1000).toFixed(1)} s`;

test('the e2b SDK against the API role: sandboxes on both nodes, envd relayed to the owner, a merged list, a lost node\'s sandbox gone', { skip }, async (t) => {
  const t0 = Date.now();
  const url = await newDatabase();
  // The sandboxes' base image: built here if the cache lacks it (the nodes' namespaces have no route to Debian's archive).
  await prebuildRecipes([BASE_RECIPE]);
  const store = await PgStore.open(url);
  const env = clusterEnv({ KILN_MAX_CONCURRENT_BOOTS: '2', KILN_CLONE_POOL_SIZE: '0' });
  const spaces: TestNetns[] = [];
  const nodes: TestDaemon[] = [];
  let api: TestDaemon | null = null;
  const made: Sandbox[] = [];
  try {
    for (const name of NODES) {
      const ns = await createNetns();
      spaces.push(ns);
      nodes.push(await startClusterNode(url, name, ns, env, { backend: 'qemu', args: ['--e2b-listen', `${ns.nsIp}:0`] }));
    }
    api = await startKilnd({ serveArgs: ['--store', url, '--role', 'api', '--e2b-listen', '127.0.0.1:0'], env });
    const e2bUrl = /kiln e2b server on (http:\/\/\S+)/.exec(api.output())?.[1];
    assert.ok(e2bUrl, api.output());
    // One key for the cluster: the API role's is the one every node derives from the shared token.
    const apiKey = (await fs.readFile(path.join(api.stateDir, 'e2b-api-key'), 'utf8')).trim();
    for (const n of nodes) assert.equal((await fs.readFile(path.join(n.stateDir, 'e2b-api-key'), 'utf8')).trim(), apiKey);
    // Each node advertises its namespace's E2B listener.
    const rows = await store.listNodes();
    assert.deepEqual(rows.map((n) => n.name), [...NODES]);
    for (const [i, n] of rows.entries()) assert.match(n.e2bUrl ?? '', new RegExp(`^http://${spaces[i]!.nsIp.replaceAll('.', '\\.')}:\\d+$`), `${n.name}: ${n.e2bUrl}`);
    const nodeName = new Map(rows.map((n) => [n.id, n.name]));
    const nodeOf = async (id: string) => nodeName.get((await store.getVm(id))!.nodeId!)!;
    process.env.E2B_API_URL = e2bUrl;
    process.env.E2B_SANDBOX_URL = e2bUrl;
    process.env.E2B_API_KEY = apiKey;
    delete process.env.E2B_DOMAIN;
    t.diagnostic(`cluster up: ${stamp(t0)}`);

    const meta = { suite: 'cluster-e2b', run: String(process.pid) };
    const tFirst = Date.now();
    const a = await Sandbox.create('base', { metadata: { ...meta, n: 'a' }, requestTimeoutMs: FIRST_CREATE_MS, timeoutMs: LIFE_MS });
    made.push(a);
    const home = await nodeOf(a.sandboxId);
    const other = NODES.find((n) => n !== home)!;
    t.diagnostic(`first sandbox (template built) on ${home}: ${stamp(tFirst)}`);
    // Template locality: the next one goes where the template's sandboxes run.
    const b = await Sandbox.create('base', { metadata: { ...meta, n: 'b' }, requestTimeoutMs: FIRST_CREATE_MS, timeoutMs: LIFE_MS });
    made.push(b);
    assert.equal(await nodeOf(b.sandboxId), home, 'placed beside the template\'s other sandbox');
    // Pinned to the other node: it clones the same template there.
    const c = await Sandbox.create('base', { metadata: { ...meta, n: 'c' }, requestTimeoutMs: FIRST_CREATE_MS, timeoutMs: LIFE_MS, apiHeaders: { 'x-kiln-node': other } });
    made.push(c);
    assert.equal(await nodeOf(c.sandboxId), other);
    t.diagnostic(`three sandboxes: ${stamp(tFirst)}`);

    // envd through the API role, on each node: commands and files.
    for (const s of [a, c]) {
      const r = await s.commands.run('echo "$((6 * 7)) $(whoami)"; cat /proc/sys/kernel/hostname');
      assert.equal(r.exitCode, 0);
      assert.equal(r.stdout.split('\n')[0], '42 user');
      await s.files.write('/home/user/from-api.txt', `written to ${s.sandboxId}\n`);
      assert.equal(await s.files.read('/home/user/from-api.txt'), `written to ${s.sandboxId}\n`);
      assert.equal((await s.commands.run('cat /home/user/from-api.txt')).stdout, `written to ${s.sandboxId}\n`);
    }

    // What the relay costs: the same envd call through the API role and straight to the node.
    const homeE2b = rows.find((n) => n.name === home)!.e2bUrl!;
    const direct = await Sandbox.connect(a.sandboxId, { apiUrl: homeE2b, sandboxUrl: homeE2b, timeoutMs: LIFE_MS });
    const medianRead = async (s: Sandbox) => {
      const times: number[] = [];
      for (let i = 0; i < 21; i++) {
        const t1 = performance.now();
        assert.equal(await s.files.read('/home/user/from-api.txt'), `written to ${a.sandboxId}\n`);
        times.push(performance.now() - t1);
      }
      return times.sort((x, y) => x - y)[10]!;
    };
    const [viaApi, viaNode] = [await medianRead(a), await medianRead(direct)];
    t.diagnostic(`files.read median of 21: ${viaApi.toFixed(1)} ms through the API role, ${viaNode.toFixed(1)} ms straight to the node (load ${(await fs.readFile('/proc/loadavg', 'utf8')).split(' ')[0]})`);

    // The list is both nodes', filtered by metadata; v2 paging crosses nodes.
    const listed = await Sandbox.list({ query: { metadata: meta } }).nextItems();
    assert.deepEqual(listed.map((s) => s.sandboxId).sort(), [a, b, c].map((s) => s.sandboxId).sort());
    const pager = Sandbox.list({ query: { metadata: meta }, limit: 2 });
    const pages = [await pager.nextItems()];
    assert.equal(pager.hasNext, true);
    pages.push(await pager.nextItems());
    assert.equal(pager.hasNext, false);
    assert.deepEqual(pages.flat().map((s) => s.sandboxId).sort(), [a, b, c].map((s) => s.sandboxId).sort());
    assert.deepEqual((await Sandbox.list({ query: { metadata: { ...meta, n: 'c' } } }).nextItems()).map((s) => s.sandboxId), [c.sandboxId]);

    // Per-sandbox control-plane routes on the owner: info, timeout, pause and connect.
    const info = await Sandbox.getInfo(c.sandboxId);
    assert.equal(info.templateId, 'base');
    assert.deepEqual(info.metadata, { ...meta, n: 'c' });
    await c.setTimeout(600_000);
    assert.ok((await Sandbox.getInfo(c.sandboxId)).endAt.getTime() > Date.now() + 500_000);
    assert.equal(await b.pause(), true);
    assert.equal((await Sandbox.getInfo(b.sandboxId)).state, 'paused');
    const resumed = await Sandbox.connect(b.sandboxId, { timeoutMs: 300_000 });
    assert.equal((await resumed.commands.run('echo back')).stdout, 'back\n');

    // Kill through the API: gone on its node.
    assert.equal(await b.kill(), true);
    made.splice(made.indexOf(b), 1);
    assert.equal(await store.getVm(b.sandboxId), null);
    await assert.rejects(Sandbox.getInfo(b.sandboxId), NotFoundError);
    assert.equal(await b.kill(), false, 'a second kill: 404, as E2B answers');

    // c's node dies. Once it is lost, c is gone as far as E2B is concerned; a still works.
    const dead = nodes[NODES.indexOf(other)]!;
    await dead.kill();
    const tLost = Date.now();
    await until(`${other} marked lost`, async () => ((await store.listNodes()).find((n) => n.name === other)?.state === 'lost' ? true : null), LOST_AFTER_MS * 4, 200);
    t.diagnostic(`${other} lost after ${stamp(tLost)}`);
    await assert.rejects(Sandbox.getInfo(c.sandboxId), NotFoundError);
    await assert.rejects(Sandbox.connect(c.sandboxId), NotFoundError);
    assert.equal(await c.kill(), false);
    assert.equal(await c.isRunning(), false, 'envd answers 502 for it, as E2B\'s proxy does');
    assert.deepEqual((await Sandbox.list({ query: { metadata: meta } }).nextItems()).map((s) => s.sandboxId), [a.sandboxId]);
    assert.equal((await a.commands.run('echo still')).stdout, 'still\n');
    made.splice(made.indexOf(c), 1);
    assert.equal(await a.kill(), true);
    made.splice(made.indexOf(a), 1);
  } finally {
    for (const s of made) await s.kill().catch(() => {});
    await stopCluster({ api, nodes, spaces, store });
  }
  await assertClusterGone(spaces, nodes.map((d) => d.stateDir));
  t.diagnostic(`total: ${stamp(t0)}`);
});
