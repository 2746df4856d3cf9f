// The API role's routes for what lives on one node: a real PostgreSQL, two kilnd nodes each in
// its own network namespace, one `kiln serve --role api`; every call below goes to the API.
// An image uploaded (streamed to the node with the most free disk), listed from the
// catalogue, deleted on every node and garbage-collected on each; a volume created on the node
// it names, a container attaching it placed there (its logs followed live, exec, the volume's
// file), a create whose volumes are on two nodes refused with KILN_ERR_NODE_CONFLICT; a
// snapshot of a VM on one node and the clone restored from it placed on that node, counted as a
// pinned placement in the API role's /metrics; a template built through the API, asked for
// again and cloned on the node that built it. Boots five guests: run under
// `flock /tmp/kiln-vm.lock`.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { makeTar } from '../src/image/flatten/testing/tar-writer.ts';
import type { KilnClient } from '../src/sdk/client.ts';
import { PgStore } from '../src/store/pg/pg-store.ts';
import { expectApiError } from './helpers/api-errors.ts';
import { startKilnd, waitForState, type TestDaemon } from './helpers/kilnd.ts';
import { assertClusterGone, clusterEnv, startClusterNode, stopCluster } from './helpers/cluster.ts';
import { createNetns, type TestNetns } from './helpers/netns.ts';
import { postgresPerFile } from './helpers/postgres.ts';
import { until } from './helpers/until.ts';

const NODES = ['n1', 'n2'] as const;
const newDatabase = postgresPerFile();
const stamp = (t0: number) => `${((Date.now() - t0) / 1000).toFixed(1)} s`;

test('through the API role only: image upload/delete/gc, a volume and the container that attaches it, a snapshot and its clone on the snapshot\'s node, a template and its clone on its node, metrics', async (t) => {
  const t0 = Date.now();
  const url = await newDatabase();
  const store = await PgStore.open(url);
  const env = clusterEnv();
  const spaces: TestNetns[] = [];
  const nodes: TestDaemon[] = [];
  const stateDirs: string[] = [];
  let api: TestDaemon | null = null;
  try {
    for (let i = 0; i < NODES.length; i++) {
      spaces.push(await createNetns());
      nodes.push(await startClusterNode(url, NODES[i]!, spaces[i]!, env));
      stateDirs.push(nodes[i]!.stateDir);
    }
    api = await startKilnd({ serveArgs: ['--store', url, '--role', 'api'], env: { ...env, KILN_PLACEMENT_K: '2' } });
    const c: KilnClient = api.client;
    const call = (method: string, path: string, body?: unknown, headers: Record<string, string> = {}) =>
      fetch(`${api!.url}${path}`, {
        method, headers: { ...api!.authHeaders, ...(body === undefined ? {} : { 'content-type': 'application/json' }), ...headers },
        ...(body === undefined ? {} : { body: JSON.stringify(body) }),
      });
    const nameOf = new Map((await store.listNodes()).map((n) => [n.id, n.name]));
    const idOf = new Map([...nameOf].map(([id, name]) => [name, id]));
    assert.deepEqual([...nameOf.values()].sort(), [...NODES]);
    t.diagnostic(`cluster up: ${stamp(t0)}`);

    // ---- images: an upload streamed to one node, in the catalogue, deleted on every node, gc on each.
    const tar = makeTar([{ path: 'etc/', type: 'dir' }, { path: 'etc/uploaded', body: 'through the API\n' }]);
    const up = await fetch(`${api.url}/v1/images/upload?name=uploaded`, {
      method: 'POST', headers: { ...api.authHeaders, 'content-type': 'application/x-tar' },
      body: new Uint8Array(tar),
    });
    assert.equal(up.status, 201, await up.clone().text());
    assert.ok(NODES.includes(up.headers.get('x-kiln-node') as (typeof NODES)[number]), `uploaded on a node: ${up.headers.get('x-kiln-node')}`);
    const uploaded = (await up.json()) as { id: string; name: string };
    assert.ok((await c.listImages()).some((i) => i.id === uploaded.id), 'the upload is in the cluster catalogue');
    const del = await call('DELETE', `/v1/images/${uploaded.id}`);
    assert.equal(del.status, 204, await del.clone().text());
    assert.match(del.headers.get('x-kiln-node-results') ?? '', /^n1=(204|404), n2=(204|404)$/, 'the delete went to every node');
    assert.match(del.headers.get('x-kiln-node-results') ?? '', /=204/);
    await expectApiError(c.request('GET', `/v1/images/${uploaded.id}`), 404, 'KILN_ERR_IMAGE_NOT_FOUND');
    await expectApiError(c.request('DELETE', `/v1/images/${uploaded.id}`), 404, 'KILN_ERR_IMAGE_NOT_FOUND');
    const gc = (await (await call('POST', '/v1/images/gc', {})).json()) as { nodes: { node: string; status: number }[]; removed_files: number };
    assert.deepEqual(gc.nodes.map((n) => [n.node, n.status]), [['n1', 200], ['n2', 200]], 'gc ran on every node');
    t.diagnostic(`images: ${stamp(t0)}`);

    // ---- a volume on the node it names; a container attaching it is placed there.
    const vr = await call('POST', '/v1/volumes', { name: 'data', size_mib: 32, node: 'n2' });
    assert.equal(vr.status, 201, await vr.clone().text());
    assert.equal(vr.headers.get('x-kiln-node'), 'n2');
    const volume = (await vr.json()) as { id: string };
    assert.equal((await store.getVolume(volume.id))?.nodeId, idOf.get('n2'), 'the row names the node holding the file');
    const other = await (await call('POST', '/v1/volumes', { name: 'elsewhere', size_mib: 32, node: 'n1' })).json() as { id: string };
    const vols = (await (await call('GET', '/v1/volumes')).json()) as { volumes: { id: string; node: string }[] };
    assert.deepEqual(vols.volumes.map((v) => [v.id, v.node]), [[volume.id, 'n2'], [other.id, 'n1']], 'merged list, each tagged with its node');
    await expectApiError(
      c.request('POST', '/v1/containers', { body: { image: 'default', name: 'split', cmd: ['true'], volumes: [{ volume: 'data', target: '/a' }, { volume: 'elsewhere', target: '/b' }] } }),
      409, 'KILN_ERR_NODE_CONFLICT',
    );

    const ctr = await c.createContainer({
      image: 'default', name: 'ctr', volumes: [{ volume: 'data', target: '/data' }],
      cmd: ['/bin/sh', '-c', 'echo hello-ctr; while sleep 0.2; do if [ -f /data/go ]; then rm /data/go; echo go-seen; fi; done'],
    }, { wait: true, timeoutMs: 240_000 });
    assert.equal(nameOf.get((await store.getVm(ctr.id))!.nodeId!), 'n2', 'placed on its volume\'s node');
    const listed = (await (await call('GET', '/v1/containers')).json()) as { containers: { id: string; node: string }[] };
    assert.deepEqual(listed.containers.map((x) => [x.id, x.node]), [[ctr.id, 'n2']]);
    // Logs followed through the API: the retained line, then a line written after the stream opened.
    const ac = new AbortController();
    const follow = c.containerLogStream('ctr', { follow: true, signal: ac.signal });
    const seen: string[] = [];
    const reading = (async () => {
      for await (const item of follow) {
        if ('text' in item) seen.push(item.text);
        if (seen.includes('go-seen')) return true;
      }
      return false;
    })();
    await until('the followed log has the first line', async () => (seen.includes('hello-ctr') ? true : null), 30_000, 50);
    const ex = await c.execContainer('ctr', { cmd: ['/bin/sh', '-c', 'echo kept > /data/file && touch /data/go && cat /data/file && hostname'] });
    assert.equal(ex.exit_code, 0, ex.stderr);
    assert.match(ex.stdout, /^kept\n/);
    const timer = setTimeout(() => ac.abort(), 30_000);
    assert.equal(await reading, true, `a line written while following arrived live: ${JSON.stringify(seen)}`);
    clearTimeout(timer);
    ac.abort();
    assert.match(await c.containerLogs('ctr'), /hello-ctr\n(.*\n)*go-seen/);
    await expectApiError(c.request('DELETE', `/v1/volumes/${volume.id}`), 409, 'KILN_ERR_VOLUME_IN_USE');
    await c.removeContainer('ctr', { force: true });
    await expectApiError(c.getContainer('ctr'), 404, 'KILN_ERR_CONTAINER_NOT_FOUND');
    await c.deleteVolume(volume.id);
    await c.deleteVolume(other.id);
    assert.deepEqual(await c.listVolumes(), []);
    t.diagnostic(`volume + container: ${stamp(t0)}`);

    // ---- a snapshot of a VM on n1 (pinned there with x-kiln-node), and a clone restored on n1.
    const vmRes = await call('POST', '/v1/vms', { name: 'origin', memory_mib: 128 }, { 'x-kiln-node': 'n1' });
    assert.equal(vmRes.status, 201, await vmRes.clone().text());
    assert.equal(vmRes.headers.get('x-kiln-node'), 'n1');
    const origin = await waitForState(c, ((await vmRes.json()) as { id: string }).id, ['ready', 'failed'], 240_000);
    assert.equal(origin.state, 'ready', origin.state_reason ?? '');
    await c.exec(origin.id, { cmd: ['/bin/sh', '-c', 'echo before-snapshot > /root/mark'] });
    const snap = await c.createSnapshot(origin.id);
    assert.equal((await store.getSnapshot(snap.id))?.nodeId, idOf.get('n1'));
    const snaps = (await (await call('GET', '/v1/snapshots')).json()) as { snapshots: { id: string; node: string }[] };
    assert.deepEqual(snaps.snapshots.map((s) => [s.id, s.node]), [[snap.id, 'n1']]);
    assert.equal((await c.getSnapshot(snap.id)).id, snap.id);
    const pinnedBefore = await pinnedPlacements(call);
    const cloneRes = await call('POST', '/v1/vms', { name: 'clone', snapshot: snap.id });
    assert.equal(cloneRes.status, 201, await cloneRes.clone().text());
    assert.equal(cloneRes.headers.get('x-kiln-node'), 'n1', 'the clone is placed on the snapshot\'s node');
    assert.equal(await pinnedPlacements(call), pinnedBefore + 1, 'counted as pinned (not placed there by chance)');
    const clone = await waitForState(c, ((await cloneRes.json()) as { id: string }).id, ['ready', 'failed'], 240_000);
    assert.equal(clone.state, 'ready', clone.state_reason ?? '');
    assert.equal(nameOf.get((await store.getVm(clone.id))!.nodeId!), 'n1');
    assert.equal((await c.exec(clone.id, { cmd: ['cat', '/root/mark'] })).stdout, 'before-snapshot\n', 'the clone has the snapshot\'s state');
    t.diagnostic(`snapshot + clone: ${stamp(t0)}`);

    // ---- a template built through the API on one node; a clone of that image's template goes there.
    const tr = await call('POST', '/v1/templates', { image: 'default', memory_mib: 128 });
    assert.equal(tr.status, 201, await tr.clone().text());
    const builtOn = tr.headers.get('x-kiln-node')!;
    const template = (await tr.json()) as { id: string; state: string };
    assert.equal(template.state, 'ready');
    assert.equal(nameOf.get((await store.getTemplate(template.id))!.nodeId!), builtOn, 'the row names the node that built it');
    const tpls = (await (await call('GET', '/v1/templates')).json()) as { templates: { id: string; node: string }[] };
    assert.deepEqual(tpls.templates.map((x) => [x.id, x.node]), [[template.id, builtOn]]);
    const again = await call('POST', '/v1/templates', { image: 'default', memory_mib: 128 });
    assert.deepEqual([again.status, again.headers.get('x-kiln-node'), ((await again.json()) as { id: string }).id], [201, builtOn, template.id], 'asked again: answered by its node, not built twice');
    const fromTpl = await call('POST', '/v1/vms', { name: 'from-template', template: 'default', memory_mib: 128 });
    assert.equal(fromTpl.status, 201, await fromTpl.clone().text());
    assert.equal(fromTpl.headers.get('x-kiln-node'), builtOn, 'template locality: the clone goes where the template is');
    const tclone = await waitForState(c, ((await fromTpl.json()) as { id: string }).id, ['ready', 'failed'], 240_000);
    assert.equal(tclone.state, 'ready', tclone.state_reason ?? '');
    assert.equal((await c.exec(tclone.id, { cmd: ['echo', 'cloned'] })).stdout, 'cloned\n');
    await c.deleteVm(tclone.id);
    const tdel = await call('DELETE', `/v1/templates/${template.id}`);
    assert.deepEqual([tdel.status, tdel.headers.get('x-kiln-node')], [204, builtOn]);
    assert.deepEqual(((await (await call('GET', '/v1/templates')).json()) as { templates: unknown[] }).templates, []);
    t.diagnostic(`template + clone: ${stamp(t0)}`);

    // ---- the API role's own metrics.
    const metrics = await (await call('GET', '/metrics')).text();
    for (const n of NODES) assert.match(metrics, new RegExp(`^kiln_cluster_node_up\\{node="${n}"\\} 1$`, 'm'));
    assert.match(metrics, /^kiln_api_forwarded_requests_total\{node="n1",method="POST",status="201"\} \d+$/m);
    assert.match(metrics, /^kiln_api_placements_total\{what="container",kind="pinned"\} 1$/m);
    assert.match(metrics, /^kiln_api_placements_total\{what="vm",kind="template"\} 1$/m);
    assert.match(metrics, /^kiln_api_placements_total\{what="template",kind="template"\} 1$/m, 'the second template request went to its node by locality');

    await c.deleteVm(clone.id);
    await c.deleteSnapshot(snap.id);
    assert.deepEqual(await c.listSnapshots(), []);
    await c.deleteVm(origin.id);
    assert.deepEqual(await c.listVms(), []);
  } finally {
    await stopCluster({ api, nodes, spaces, store });
  }
  await assertClusterGone(spaces, stateDirs);
  t.diagnostic(`total: ${stamp(t0)}`);
});

/** kiln_api_placements_total{what="vm",kind="pinned"} from the API role's /metrics. */
async function pinnedPlacements(call: (m: string, p: string) => Promise<Response>): Promise<number> {
  const m = /^kiln_api_placements_total\{what="vm",kind="pinned"\} (\d+)$/m.exec(await (await call('GET', '/metrics')).text());
  return m ? Number(m[1]) : 0;
}
