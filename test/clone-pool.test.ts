// The clone pool (src/snapshot/clone-pool.ts) on a real kilnd with real VMs: a create served
// from the pool is ready when it returns and is its own VM (name, hostname, env, agent);
// the pool refills; hits, misses and refills are in /healthz and /metrics; deleting the
// template drains the pool and leaves no VMM, namespace or runtime dir; a kilnd SIGKILLed
// with a full pool leaves nothing after its restart.
import assert from 'node:assert/strict';
import fs from 'node:fs/promises';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { CLONE_NETNS_PREFIX, cloneNetnsName } from '../src/net/clone-netns.ts';
import { listNetns } from '../src/tools/ip.ts';
import { BACKEND_SKIP } from './helpers/backend.ts';
import { startKilnd, testNetwork, vmmPids, type TestDaemon, type TestNetwork } from './helpers/kilnd.ts';
import { until } from './helpers/until.ts';

const skip = BACKEND_SKIP || (process.env.KILN_BACKEND === 'firecracker' ? 'clone pools are exercised on QEMU here (Firecracker clones need its jailer)' : false);
const POOL = 2;

let d: TestDaemon;
let stateDir: string;
let network: TestNetwork;

const daemon = async () => {
  const started = await startKilnd({ backend: 'qemu', network, env: { KILN_CLONE_POOL_SIZE: String(POOL) }, ...(stateDir ? { stateDir } : {}) });
  stateDir = started.stateDir;
  return started;
};

before(async () => {
  if (skip) return;
  network = testNetwork();
  d = await daemon();
});
after(() => d?.dispose());

/** A process that has exited (a zombie has: kilnd's orphans are reaped by whoever PID 1 is). */
async function gone(pid: number): Promise<boolean> {
  const stat = await fs.readFile(`/proc/${pid}/stat`, 'utf8').catch(() => null);
  return stat === null || stat.slice(stat.lastIndexOf(')') + 2).startsWith('Z');
}

/** Waits until the pool of `snapshot` holds `n` clones. */
async function poolHolds(snapshot: string, n: number): Promise<void> {
  await until(`${n} pooled clones of ${snapshot}`, async () => ((await d.client.health()).pools.clones.by_snapshot.find((b) => b.snapshot === snapshot)?.ready ?? 0) >= n || null, 300_000);
}

/** No VMM process, clone namespace or runtime dir beyond the VMs the store lists. */
async function assertOnlyListed(what: string): Promise<void> {
  const vms = await d.client.listVms();
  assert.deepEqual((await vmmPids(path.join(stateDir, 'vms'))).sort(), vms.filter((v) => v.pid).map((v) => v.pid!).sort(), `${what}: VMM processes`);
  const dirs = await fs.readdir(path.join(stateDir, 'vms')).catch(() => [] as string[]);
  assert.deepEqual(dirs.sort(), vms.map((v) => v.id).sort(), `${what}: runtime dirs`);
  const ours = new Set(vms.map((v) => cloneNetnsName(v.id)));
  const namespaces = (await listNetns()).filter((n) => n.startsWith(CLONE_NETNS_PREFIX));
  const health = await d.client.health();
  assert.equal(health.vms, vms.length, `${what}: the store holds no VM besides the listed ones (pooled clones included)`);
  for (const dir of dirs) assert.ok(ours.has(cloneNetnsName(dir)) || !namespaces.includes(cloneNetnsName(dir)));
}

/**
 * A VMM's CPU share under contention as its cgroup says: 'background' (cpu.shares 2 / cpu.weight
 * 1) or 'normal' (1024 / 100); read from /proc/<pid>/cgroup and the mounted hierarchies.
 */
async function cpuPriority(pid: number): Promise<string> {
  const lines = (await fs.readFile(`/proc/${pid}/cgroup`, 'utf8')).trim().split('\n').map((l) => l.split(':'));
  const mounts = (await fs.readFile('/proc/mounts', 'utf8')).trim().split('\n').map((l) => l.split(' '));
  const v1 = lines.find(([, ctrls]) => ctrls!.split(',').includes('cpu'));
  if (v1) {
    const mount = mounts.find((m) => m[2] === 'cgroup' && m[3]!.split(',').includes('cpu'))![1]!;
    const shares = (await fs.readFile(path.join(mount, v1[2]!, 'cpu.shares'), 'utf8')).trim();
    return ({ '2': 'background', '1024': 'normal' } as Record<string, string>)[shares] ?? `cpu.shares ${shares}`;
  }
  const mount = mounts.find((m) => m[2] === 'cgroup2')![1]!;
  const weight = (await fs.readFile(path.join(mount, lines.find(([h]) => h === '0')![2]!, 'cpu.weight'), 'utf8')).trim();
  return ({ '1': 'background', '100': 'normal' } as Record<string, string>)[weight] ?? `cpu.weight ${weight}`;
}

describe('clone pool', { skip }, () => {
  let template: string;
  let snapshot: string;

  test('a create served from the pool is ready at once and is its own VM; the pool refills', async () => {
    const t = await d.client.createTemplate('default', { memoryMib: 128 });
    template = t.id;
    snapshot = t.snapshot!;
    await poolHolds(snapshot, POOL);
    assert.deepEqual(await d.client.listVms(), [], 'pooled clones are not the users\' VMs');
    const pooled = await vmmPids(path.join(stateDir, 'vms'));
    assert.equal(pooled.length, POOL);
    for (const pid of pooled) assert.equal(await cpuPriority(pid), 'background', 'a clone made ahead yields the CPU to VMs in use');

    const vm = await d.client.createVm({ template, name: 'from-pool', env: { POOLED: 'yes' } });
    assert.equal(vm.state, 'ready', 'a pool hit is ready when the create returns');
    assert.equal(vm.name, 'from-pool');
    assert.equal(await cpuPriority(vm.pid!), 'normal', 'taken into use, it competes like any VM');
    const r = await d.client.exec(vm.id, { cmd: ['/bin/sh', '-c', 'hostname; echo "$POOLED"'] });
    assert.deepEqual(r.stdout.trim().split('\n'), ['from-pool', 'yes'], 'its hostname and env are its own');
    const phases = (await d.client.getVm(vm.id)).timeline.map((p) => p.phase);
    assert.deepEqual(phases, ['api.accept', 'vmm.resume', 'guest.identity'], 'its timeline is the take: one resume, one identity op');

    const health = (await d.client.health()).pools.clones;
    assert.equal(health.size, POOL);
    assert.ok(health.hits >= 1, `a hit is counted: ${JSON.stringify(health)}`);
    await poolHolds(snapshot, POOL);
    const metrics = await (await fetch(`${d.url}/metrics`, { headers: d.authHeaders })).text();
    assert.match(metrics, /kiln_clone_pool_total\{event="hit"\} [1-9]/);
    assert.match(metrics, /kiln_clone_pool_total\{event="refill"\} [1-9]/);
    assert.match(metrics, new RegExp(`kiln_clone_pool_clones\\{kind="size"\\} ${POOL}`));

    // A request the pool cannot serve (its own egress policy) is a miss, restored the slow way.
    const own = await d.client.createVm({ template, name: 'own-egress', egress: 'none' }, { wait: true });
    assert.equal(own.state, 'ready');
    assert.ok((await d.client.health()).pools.clones.misses >= 1);
    await d.client.deleteVm(own.id);
    await d.client.deleteVm(vm.id);
  });

  test('deleting the template drains its pool: no pooled VMM, namespace or file is left', async () => {
    await d.client.deleteTemplate(template);
    const health = (await d.client.health()).pools.clones;
    assert.equal(health.ready, 0, JSON.stringify(health));
    await assertOnlyListed('after the template was deleted');
    assert.deepEqual(await d.client.listVms(), []);
  });

  test('kilnd SIGKILLed with a full pool: after the restart nothing of the pool is left', async () => {
    const t = await d.client.createTemplate('default', { memoryMib: 128 });
    await poolHolds(t.snapshot!, POOL);
    const pooledPids = await vmmPids(path.join(stateDir, 'vms'));
    assert.equal(pooledPids.length, POOL, 'the pool\'s VMMs run');
    await d.kill();
    d = await daemon();
    for (const pid of pooledPids) assert.ok(await gone(pid), `the pooled VMM ${pid} is gone`);
    // The restarted kilnd refills on demand only: nothing is pooled until a clone is asked for.
    await assertOnlyListed('after a SIGKILL with a full pool');
    await d.client.deleteTemplate(t.id);
  });
});
