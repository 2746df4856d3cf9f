// Issue #17's acceptance test: a cluster on one machine. A real PostgreSQL (Debian's, started
// by the test in a temp dir), three kilnd nodes, each in its own network namespace (a veth
// /30 to the root namespace; it listens on its own address there and reaches PostgreSQL over
// the unix socket), and one `kiln serve --role api` in the root namespace, every one a
// separate process. Through the API only: 12 VMs spread 4/4/4 by free capacity; exec, logs,
// images, events (SSE, replay and live) and the console WebSocket (output out, input in) for
// VMs on every node, exec and logs also through a second API process; a function deployed once
// and invoked on every node. SIGKILL of one node: its VMs are `lost` within the deadline, the
// API answers for them with KILN_ERR_NODE_UNAVAILABLE, the function is answered by another
// node; restarted, the node rejoins and no VM has a second VMM (VMM processes counted per VM).
// Cleanup leaves no namespace, veth or VMM behind.
// Boots 12 VMs and 3 function instances: run under `flock /tmp/kiln-vm.lock`.
import assert from 'node:assert/strict';
import fs from 'node:fs/promises';
import { test } from 'node:test';
import { KilnApiError, type KilnClient } from '../src/sdk/client.ts';
import { REJOIN_REASON } from '../src/cluster/node-member.ts';
import { PgStore } from '../src/store/pg/pg-store.ts';
import { expectApiError } from './helpers/api-errors.ts';
import { startKilnd, vmmPids, waitForState, type TestDaemon } from './helpers/kilnd.ts';
import { runtimeRecipe } from '../src/functions/runtimes.ts';
import { assertClusterGone, clusterEnv, prebuildRecipes, startClusterNode, stopCluster } from './helpers/cluster.ts';
import { createNetns, type TestNetns } from './helpers/netns.ts';
import { FENCE_TIMING, postgresPerFile } from './helpers/postgres.ts';
import { freePort } from './helpers/ports.ts';
import { readUntil } from './helpers/console-ws.ts';
import { until } from './helpers/until.ts';

// Fencing's timing, not the fastest: twelve TCG guests booting on two cores delay a node's
// heartbeat past 1.4 s (CLUSTER_TIMING's fence point), and a node that fences kills its VMs.
const { heartbeatMs: HEARTBEAT_MS, lostAfterMs: LOST_AFTER_MS } = FENCE_TIMING;
const NODES = ['n1', 'n2', 'n3'] as const;
const VMS = 12;
const newDatabase = postgresPerFile();

/** VMM processes (QEMU) running VM `id`: its runtime dir is on the command line. */
async function vmmsOf(id: string): Promise<number> {
  let n = 0;
  for (const p of await fs.readdir('/proc')) {
    if (!/^\d+$/.test(p)) continue;
    const cmd = await fs.readFile(`/proc/${p}/cmdline`, 'utf8').catch(() => '');
    const stat = await fs.readFile(`/proc/${p}/stat`, 'utf8').catch(() => '');
    if (stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3) === 'Z') continue;
    if (cmd.startsWith('qemu-system') && cmd.includes(`/vms/${id}/`)) n++;
  }
  return n;
}


const stamp = (t0: number) => `${((Date.now() - t0) / 1000).toFixed(1)} s`;

test('an API (and a second one), three nodes in their own network namespaces: spread, exec/logs/console/events/functions on every node, a lost node routed around, its rejoin runs nothing twice', async (t) => {
  const t0 = Date.now();
  const url = await newDatabase();
  // The function below runs on node's runtime image: built here if the cache lacks it (the nodes' namespaces have no route to Debian's archive).
  await prebuildRecipes([await runtimeRecipe('node')]);
  const store = await PgStore.open(url);
  // Two emulated CPUs for three nodes: two boots at a time per node keeps each within its deadline.
  const env = clusterEnv({ KILN_MAX_CONCURRENT_BOOTS: '2' });
  const spaces: TestNetns[] = [];
  const nodes: TestDaemon[] = [];
  const stateDirs: string[] = [];
  let api: TestDaemon | null = null;
  let api2: TestDaemon | null = null;
  const startNode = (i: number, from?: TestDaemon) => startClusterNode(url, NODES[i]!, spaces[i]!, env, from ? { from } : {});
  try {
    // One after the other: the first imports the default image, the others find it.
    for (let i = 0; i < NODES.length; i++) {
      spaces.push(await createNetns());
      nodes.push(await startNode(i));
      stateDirs.push(nodes[i]!.stateDir);
    }
    // K=3: every create compares all three nodes, so the spread is exact, not just likely.
    api = await startKilnd({ serveArgs: ['--store', url, '--role', 'api'], env: { ...env, KILN_PLACEMENT_K: '3' } });
    const c: KilnClient = api.client;
    const apiUrl = api.url;
    /** An invoke through the API, pinned to a node with `x-kiln-node` when `node` is given. */
    const invokeOn = (x: number, node?: string) =>
      fetch(`${apiUrl}/v1/functions/where/invoke`, {
        method: 'POST', body: JSON.stringify({ x }),
        headers: { ...api!.authHeaders, 'content-type': 'application/json', ...(node ? { 'x-kiln-node': node } : {}) },
      });
    const listed = (await (await c.request('GET', '/v1/nodes')).json()) as { name: string; state: string; url: string }[];
    assert.deepEqual(listed.map((n) => [n.name, n.state]), NODES.map((n) => [n, 'ready']));
    for (const [i, n] of listed.entries()) assert.ok(n.url.startsWith(`http://${spaces[i]!.nsIp}:`), `${n.name} advertises its namespace's address: ${n.url}`);
    t.diagnostic(`cluster up: ${stamp(t0)}`);

    // Image files are per node: n1 built the default image, n2 and n3 fetch it at their first
    // boot. Until they hold it, image locality rightly prefers n1; so each boots one VM of it
    // first (straight to the node), and the spread below is by free capacity alone.
    await Promise.all(nodes.slice(1).map(async (d, i) => {
      const v = await d.client.createVm({ name: `fetch-${i}`, memory_mib: 128 });
      assert.equal((await waitForState(d.client, v.id, ['ready', 'failed'], 300_000)).state, 'ready');
      await d.client.deleteVm(v.id);
    }));
    const defaultImage = (await store.getImage('default'))!;
    await until('every node reports the default image in its heartbeat', async () => ((await store.listNodes()).every((n) => n.capacity.images.includes(defaultImage.id)) ? true : null), 30_000, 100);
    t.diagnostic(`the default image on every node: ${stamp(t0)}`);

    // 12 creates, answered one after the other (each placement sees the last), booting together.
    const tCreate = Date.now();
    const made = [];
    // The last one publishes a port: reached below through the API's address, not its node's.
    const published = await freePort();
    for (let i = 0; i < VMS; i++) made.push(await c.createVm({ name: `c${i}`, memory_mib: 128, ...(i === VMS - 1 ? { ports: [{ host: published, guest: 80 }] } : {}) }));
    const vms = await Promise.all(made.map((v) => waitForState(c, v.id, ['ready', 'failed'], 300_000)));
    assert.deepEqual(vms.filter((v) => v.state !== 'ready').map((v) => [v.name, v.state, v.state_reason]), [], 'every VM ready');
    t.diagnostic(`${VMS} VMs ready through the API: ${stamp(tCreate)}`);
    const nameOf = new Map((await store.listNodes()).map((n) => [n.id, n.name]));
    const nodeOf = new Map<string, string>();
    for (const v of vms) nodeOf.set(v.id, nameOf.get((await store.getVm(v.id))!.nodeId!)!);
    const on = (n: string) => [...nodeOf].filter(([, x]) => x === n).map(([id]) => id);
    assert.deepEqual(NODES.map((n) => on(n).length), [4, 4, 4], `placement by free capacity: ${JSON.stringify([...nodeOf])}`);
    assert.equal((await c.listVms()).length, VMS, 'the list is every node’s');
    assert.ok((await c.listImages()).some((i) => i.name === 'default'), 'images from the cluster catalogue');
    await expectApiError(c.request('GET', '/openapi.json'), 501, 'KILN_ERR_NOT_ROUTED');

    // A second API process on the same store (the role keeps no state of its own, so any number
    // may run behind one address): the same VMs, and exec and logs on every node through it.
    api2 = await startKilnd({ serveArgs: ['--store', url, '--role', 'api'], env });
    const c2 = api2.client;
    assert.deepEqual((await c2.listVms()).map((v) => v.id).sort(), vms.map((v) => v.id).sort(), 'the second API lists every node’s VMs');
    for (const name of NODES) {
      const id = on(name)[2]!;
      const r = await c2.exec(id, { cmd: ['/bin/sh', '-c', 'echo second-$(hostname)'] });
      assert.equal(r.stdout.trim(), `second-${(await c2.getVm(id)).name}`, `exec through the second API on ${name}`);
      assert.match(await c2.logs(id), /kiln default image/);
    }

    // A published port through the API process: it listens on the port and pipes to the node.
    const web = vms[VMS - 1]!;
    await c.exec(web.id, { cmd: ['/bin/sh', '-c', 'mkdir -p /www && echo published-$(hostname) > /www/id && httpd -p 80 -h /www'] });
    const apiHost = new URL(apiUrl).hostname;
    const body = await until('the published port answers through the API', async () => {
      const r = await fetch(`http://${apiHost}:${published}/id`, { signal: AbortSignal.timeout(3000) }).catch(() => null);
      return r?.ok ? (await r.text()).trim() : null;
    }, 15_000, 200);
    assert.equal(body, `published-${web.name}`);
    const health = (await (await fetch(`${apiUrl}/healthz`)).json()) as { ports: { port: number; vm: string; state: string }[] };
    assert.deepEqual(health.ports.map((p) => [p.port, p.vm, p.state]), [[published, web.id, 'listening']]);

    // Events: the replay through the API has every node's creates.
    const replay: string[] = [];
    const ac = new AbortController();
    const tEvents = setTimeout(() => ac.abort(), 30_000);
    for await (const e of await c.subscribe({ since: 0, signal: ac.signal })) {
      if (e.type === 'vm.created') replay.push(String(e.vm));
      if (vms.every((v) => replay.includes(v.id))) break;
    }
    clearTimeout(tEvents);
    ac.abort();
    assert.deepEqual(vms.map((v) => v.id).filter((id) => !replay.includes(id)), [], 'the replay has every VM’s vm.created');

    // Exec, logs and the console of a VM on every node, all through the API.
    const consoled: string[] = [];
    for (const name of NODES) {
      const [id, other] = on(name);
      const r = await c.exec(id!, { cmd: ['/bin/sh', '-c', 'echo from-$(hostname)'] });
      assert.equal(r.exit_code, 0);
      assert.match(r.stdout, /^from-/, `exec through the API on ${name}`);
      assert.match(await c.logs(id!), /kiln default image/, `logs through the API on ${name}`);

      // Console: guest output reaches the WebSocket (written to the guest's console by an exec);
      // input reaches the guest (kiln-init's stop line on the serial input stops the workload,
      // and the live event stream through the API says so).
      const events = await c.subscribe({ vm: other!, signal: AbortSignal.timeout(120_000) });
      const ws = await c.console(other!);
      try {
        const seen = readUntil(ws, new RegExp(`console-probe-${name}`));
        await c.exec(other!, { cmd: ['/bin/sh', '-c', `echo console-probe-${name} > /dev/console`] });
        await seen;
        const closed = new Promise<number>((r) => ws.once('close', (code) => r(code)));
        ws.send('@kiln:stop grace_ms=2000\n');
        let stopped = false;
        for await (const e of events) if (e.type === 'vm.state' && e.to === 'stopped') {
          stopped = true;
          break;
        }
        assert.ok(stopped, `the stop typed into ${name}'s console stopped the VM (live event through the API)`);
        assert.equal(await closed, 1000, 'the console closes when the VM stops');
      } finally {
        ws.close();
      }
      assert.equal((await c.getVm(other!)).state, 'stopped');
      consoled.push(other!);
    }
    t.diagnostic(`exec, logs, console, events on every node: ${stamp(t0)}`);

    // A function deployed once through the API runs on every node.
    const tFn = Date.now();
    const fn = await c.request('POST', '/v1/functions', {
      body: { name: 'where', runtime: 'node', code: 'exports.handler = async (e) => ({ echo: e.x, twice: e.x * 2 });', handler: 'handler', memory_mb: 128, max_instances: 1 },
    });
    assert.equal(fn.status, 201);
    assert.ok(NODES.includes(fn.headers.get('x-kiln-node') as (typeof NODES)[number]), 'deployed through one node; the others follow the store');
    const instanceOn = new Map<string, string>();
    for (const name of NODES) {
      const res = await invokeOn(21, name);
      assert.equal(res.status, 200, await res.clone().text());
      assert.deepEqual(await res.json(), { echo: 21, twice: 42 });
      assert.equal(res.headers.get('x-kiln-node'), name);
      const inv = (await store.functions.listInvocations('where', 10)).find((i) => i.id === res.headers.get('x-kiln-invocation'))!;
      assert.equal(nameOf.get((await store.getVm(inv.instance!))!.nodeId!), name, `the invocation ran in a VM on ${name}`);
      instanceOn.set(name, inv.instance!);
    }
    const merged = await c.getFunction('where');
    assert.equal(merged.instances.length, 3, 'one instance per node in the merged view');
    t.diagnostic(`function deployed and invoked on every node: ${stamp(tFn)}`);
    // Every node reports its warm instance, so unpinned invokes go to a warm one.
    await until('every node reports a warm instance', async () => ((await store.listNodes()).every((n) => n.capacity.functions?.where === 1) ? true : null), 10_000, 50);

    // SIGKILL n3: its running VMs are lost within the deadline; the function is answered elsewhere.
    const victim = nodes[2]!;
    await victim.kill();
    const killedAt = Date.now();
    // Before the loss is noticed: an invoke that would go to n3 finds it refusing connections and goes on.
    for (let i = 0; i < 3; i++) {
      const r = await c.invoke<{ echo: number }>('where', { x: i });
      assert.equal(r.result.echo, i);
    }
    await until('n3 lost', async () => ((await store.listNodes()).find((n) => n.name === 'n3')?.state === 'lost' ? true : null), LOST_AFTER_MS * 4, 50);
    const detectedMs = Date.now() - killedAt;
    assert.ok(detectedMs <= LOST_AFTER_MS + 3 * HEARTBEAT_MS + 1_000, `lost after ${detectedMs} ms (deadline ${LOST_AFTER_MS} ms)`);
    const running3 = on('n3').filter((id) => !consoled.includes(id));
    for (const id of running3) assert.equal((await store.getVm(id))?.state, 'lost', `${id} on n3 is lost`);
    assert.equal((await store.getVm(instanceOn.get('n3')!))?.state, 'lost', 'n3’s function instance is lost');
    await assert.rejects(c.getVm(running3[0]!), (e: KilnApiError) => e.status === 503 && e.code === 'KILN_ERR_NODE_UNAVAILABLE');
    await assert.rejects(c.console(running3[0]!), (e: KilnApiError) => e.status === 503 && e.code === 'KILN_ERR_NODE_UNAVAILABLE');
    const pinned = await invokeOn(1, 'n3');
    assert.equal(pinned.status, 503);
    assert.equal(((await pinned.json()) as { code: string }).code, 'KILN_ERR_NODE_UNAVAILABLE');
    const after = await invokeOn(5);
    assert.equal(after.status, 200);
    assert.deepEqual(await after.json(), { echo: 5, twice: 10 });
    assert.notEqual(after.headers.get('x-kiln-node'), 'n3', 'the function is served by another node');
    const placed = await c.createVm({ name: 'after-loss', memory_mib: 128 });
    assert.notEqual(nameOf.get((await store.getVm(placed.id))!.nodeId!), 'n3', 'a lost node gets no new VM');
    await c.deleteVm(placed.id);
    t.diagnostic(`n3 lost after ${detectedMs} ms; routed around: ${stamp(t0)}`);

    // Restart n3 in its namespace: it rejoins as itself and runs none of its lost VMs.
    nodes[2] = await startNode(2, victim);
    const back = (await store.listNodes()).find((n) => n.name === 'n3')!;
    assert.equal(back.state, 'ready');
    assert.equal(back.incarnation, 2, 'rejoined as itself');
    for (const id of running3) {
      const vm = (await store.getVm(id))!;
      assert.equal(vm.state, 'stopped');
      assert.equal(vm.stateReason, REJOIN_REASON);
    }
    assert.deepEqual(await vmmPids(victim.stateDir), [], 'n3 runs no VMM: nothing it ran before is resumed');
    for (const [id, n] of nodeOf) {
      const want = n === 'n3' || consoled.includes(id) ? 0 : 1;
      assert.equal(await vmmsOf(id), want, `${id} (${n}): ${want} VMM process`);
    }
    assert.equal(await vmmsOf(instanceOn.get('n3')!), 0, 'n3’s function instance does not run again');
    // Through the API again: n3's VMs answer, and the function is served on n3 once more.
    assert.equal((await c.getVm(running3[0]!)).state, 'stopped');
    const again = await invokeOn(7, 'n3');
    assert.equal(again.status, 200, await again.clone().text());
    assert.deepEqual(await again.json(), { echo: 7, twice: 14 });
    t.diagnostic(`n3 rejoined, nothing ran twice: ${stamp(t0)}`);

    await c.deleteFunction('where');
    await expectApiError(c.request('GET', '/v1/functions/where'), 404, 'KILN_ERR_FUNCTION_NOT_FOUND');
    for (const id of nodeOf.keys()) await c.deleteVm(id);
    assert.deepEqual((await c.listVms()).map((v) => v.id), [], 'deletes went through the API to each node');
  } finally {
    await stopCluster({ api, apis: [api2], nodes, spaces, store });
  }
  await assertClusterGone(spaces, stateDirs);
  t.diagnostic(`total: ${stamp(t0)}`);
});
