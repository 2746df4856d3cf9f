// Snapshots, restores and templates with real VMs (issue #8 acceptance 1, 3, 4): a guest's
// in-memory state survives into two clones that each have their own address (reachable from
// the host), hostname, random stream and correct clock; broken snapshots fail cleanly with
// nothing left on the host; ten clones of a template restore concurrently; a template with
// running clones is not deleted.
import assert from 'node:assert/strict';
import fs from 'node:fs/promises';
import net from 'node:net';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { KilnApiError, type Vm } from '../src/sdk/client.ts';
import { listLinks, listNetns } from '../src/tools/ip.ts';
import { run } from '../src/util/process.ts';
import { BACKEND_SKIP } from './helpers/backend.ts';
import { startKilnd, type TestDaemon } from './helpers/kilnd.ts';
import { until } from './helpers/until.ts';

// Clones run in network namespaces with QEMU; Firecracker clones need the jailer (not here).
const skip = BACKEND_SKIP || (process.env.KILN_BACKEND === 'firecracker' ? 'KILN_BACKEND=firecracker: Firecracker snapshot clones need its jailer; this suite exercises clones on QEMU (run it without KILN_BACKEND)' : false);

let d: TestDaemon;

before(async () => {
  if (skip) return;
  d = await startKilnd({ backend: 'qemu' });
});
after(() => d?.dispose());

/** The workload: a secret drawn at start and a counter, both only in the shell's memory. */
const COUNTER = ['/bin/sh', '-c', 'secret=$(head -c 6 /dev/urandom | od -An -tx1 | tr -d " \\n"); i=0; while :; do i=$((i+1)); echo "tick $secret $i"; sleep 0.2; done'];

function ticks(log: string): { secret: string; n: number }[] {
  return [...log.matchAll(/tick ([0-9a-f]{12}) (\d+)/g)].map((m) => ({ secret: m[1]!, n: Number(m[2]) }));
}

async function sh(vm: Vm, script: string): Promise<string> {
  const r = await d.client.exec(vm.id, { cmd: ['/bin/sh', '-c', script] });
  assert.equal(r.exit_code, 0, `${script}: ${r.stderr}`);
  return r.stdout.trim();
}

/** What kiln could leave on the host for this daemon: clone namespaces and links on its bridge. */
async function hostObjects(): Promise<{ netns: string[]; links: string[] }> {
  const vmIds = new Set((await d.client.listVms()).map((v) => v.id));
  const netns = (await listNetns()).filter((n) => n.startsWith('kiln-vm-') && !vmIds.has(n.slice(5)));
  const links = (await listLinks({ master: d.network.bridge })).map((l) => l.ifname);
  return { netns, links };
}

function tcpConnect(host: string, port: number): Promise<void> {
  return new Promise((resolve, reject) => {
    const s = net.connect({ host, port, timeout: 5000 }, () => {
      s.destroy();
      resolve();
    });
    s.once('error', reject);
    s.once('timeout', () => s.destroy(new Error(`connect ${host}:${port} timed out`)));
  });
}

async function qemuProcesses(): Promise<number> {
  const { stdout } = await run('ps', ['-eo', 'args']).catch(() => ({ stdout: '' }));
  return stdout.split('\n').filter((l) => l.includes(d.stateDir) && l.includes('qemu')).length;
}

describe('snapshots and clones', { skip }, () => {
  let origin: Vm;
  let snapshotId: string;

  test('two clones continue the snapshotted state, each with its own address, hostname, randomness and clock', async () => {
    origin = await d.client.createVm({ name: 'origin', cmd: COUNTER }, { wait: true });
    const before = await until('three ticks', async () => {
      const t = ticks(await d.client.logs(origin.id));
      return t.length >= 3 ? t : null;
    });
    const secret = before[0]!.secret;
    const snap = await d.client.createSnapshot(origin.id);
    snapshotId = snap.id;
    assert.equal(snap.memory, 'full');
    assert.equal((await d.client.getVm(origin.id)).state, 'ready', 'resume defaults to true');
    const atSnapshot = ticks(await d.client.logs(origin.id)).at(-1)!.n;
    assert.ok(snap.files.some((f) => f.name === 'vmstate' && f.sha256), 'the state file is checksummed');

    const [a, b] = await Promise.all([
      d.client.createVm({ snapshot: snap.id, name: 'clone-a' }, { wait: true }),
      d.client.createVm({ snapshot: snap.id, name: 'clone-b' }, { wait: true }),
    ]);
    assert.equal(a.state, 'ready');
    assert.equal(b.state, 'ready');
    assert.ok(a.ip && b.ip && origin.ip);
    assert.equal(new Set([a.ip, b.ip, origin.ip]).size, 3, 'every clone has its own host-side address');

    for (const c of [a, b]) {
      // The workload kept running from the snapshot: same secret, counting on from there.
      const t = await until(`ticks in ${c.name}`, async () => {
        const x = ticks(await d.client.logs(c.id));
        return x.length >= 2 ? x : null;
      });
      assert.ok(t.every((x) => x.secret === secret), `${c.name} has the origin's in-memory secret`);
      // The snapshot was taken between the last tick seen before it and the first seen after it
      // (the origin runs on while the snapshot is written: on a loaded host, several ticks).
      const lastBefore = before.at(-1)!.n;
      assert.ok(t[0]!.n >= lastBefore && t[0]!.n <= atSnapshot + 1, `${c.name} counts on from the snapshot, between ${lastBefore} and ${atSnapshot} (first: ${t[0]!.n})`);
      assert.equal(await sh(c, 'hostname'), c.name);
      // Reachable from the host at its own address: a plain TCP connect to the agent port.
      await tcpConnect(c.ip!, 10240);
    }
    const [ra, rb] = await Promise.all([a, b].map((c) => sh(c, 'head -c 32 /dev/urandom | od -An -tx1 | tr -d " \\n"')));
    assert.match(ra!, /^[0-9a-f]{64}$/);
    assert.notEqual(ra, rb, 'the clones draw different random numbers (RNG reseeded per clone)');
    for (const c of [a, b]) {
      const guest = Number(await sh(c, 'date +%s'));
      assert.ok(Math.abs(guest - Date.now() / 1000) < 5, `${c.name}'s clock is the host's (${guest} vs ${Math.round(Date.now() / 1000)})`);
    }
    assert.deepEqual((await d.client.getSnapshot(snap.id)).clones.sort(), [a.id, b.id].sort());
    await assert.rejects(d.client.deleteSnapshot(snap.id), (e) => e instanceof KilnApiError && e.code === 'KILN_ERR_SNAPSHOT_IN_USE');
    await Promise.all([a, b].map((c) => d.client.deleteVm(c.id)));
    assert.deepEqual((await hostObjects()).netns, [], 'no clone namespace left');
  });

  test('a missing, truncated, corrupted or mismatched snapshot is refused and leaves nothing behind', async () => {
    const vmsBefore = (await d.client.listVms()).length;
    const objectsBefore = await hostObjects();
    const qemuBefore = await qemuProcesses();
    const fresh = async () => (await d.client.createSnapshot(origin.id)).id;
    const dirOf = (id: string) => path.join(d.stateDir, 'snapshots', id);
    const refused = async (id: string, code: string) => {
      await assert.rejects(d.client.createVm({ snapshot: id }), (e) => e instanceof KilnApiError && e.code === code, code);
    };
    await refused('snap-doesnotexist', 'KILN_ERR_SNAPSHOT_NOT_FOUND');

    const truncated = await fresh();
    const state = path.join(dirOf(truncated), 'vmstate');
    const size = (await fs.stat(state)).size;
    await fs.truncate(state, Math.floor(size / 2));
    await refused(truncated, 'KILN_ERR_SNAPSHOT_CORRUPT');

    const missing = await fresh();
    await fs.rm(path.join(dirOf(missing), 'scratch.ext4'));
    await refused(missing, 'KILN_ERR_SNAPSHOT_CORRUPT');

    const corrupted = await fresh();
    const config = path.join(dirOf(corrupted), 'config.img');
    const fh = await fs.open(config, 'r+');
    await fh.write(Buffer.from([0xff, 0x00, 0xff]), 0, 3, 100);
    await fh.close();
    await refused(corrupted, 'KILN_ERR_SNAPSHOT_CORRUPT');

    // Mismatched: the snapshot says another VMM version took it (as after a QEMU upgrade).
    const mismatched = await fresh();
    const db = path.join(d.stateDir, 'kiln.db');
    await run('sqlite3', [db, `UPDATE snapshots SET meta = json_set(meta, '$.compat.vmmVersion', '0.0.1') WHERE id = '${mismatched}'`]).catch(async () => {
      const { default: Database } = await import('better-sqlite3');
      const h = new Database(db);
      h.prepare(`UPDATE snapshots SET meta = json_set(meta, '$.compat.vmmVersion', '0.0.1') WHERE id = ?`).run(mismatched);
      h.close();
    });
    await refused(mismatched, 'KILN_ERR_SNAPSHOT_INCOMPATIBLE');

    assert.equal((await d.client.listVms()).length, vmsBefore, 'no VM record was left');
    assert.deepEqual(await hostObjects(), objectsBefore, 'no namespace, veth or tap was left');
    assert.equal(await qemuProcesses(), qemuBefore, 'no VMM process was left');
    for (const id of [truncated, missing, corrupted, mismatched]) await d.client.deleteSnapshot(id);
    await d.client.deleteSnapshot(snapshotId);
    await d.client.deleteVm(origin.id);
  });

  test('a template: ten clones restored concurrently all become ready; the template is kept while they run', async () => {
    const tpl = await d.client.createTemplate('default');
    assert.equal(tpl.state, 'ready');
    const snap = await d.client.getSnapshot(tpl.snapshot!);
    assert.equal(snap.memory, 'mapped', 'a template maps its memory into clones');
    assert.equal((await d.client.listVms()).length, 0, 'the golden VM is gone');
    assert.equal((await d.client.createTemplate('default')).id, tpl.id, 'the same template is reused');

    const clones = await Promise.all(Array.from({ length: 10 }, (_, i) => d.client.createVm({ template: tpl.id, name: `t${i}` }, { wait: true, timeoutMs: 240_000 })));
    assert.ok(clones.every((c) => c.state === 'ready'));
    assert.equal(new Set(clones.map((c) => c.ip)).size, 10);
    const names = await Promise.all(clones.map((c) => sh(c, 'hostname')));
    assert.deepEqual(names, clones.map((c) => c.name));

    await assert.rejects(d.client.deleteTemplate(tpl.id), (e) => e instanceof KilnApiError && e.code === 'KILN_ERR_SNAPSHOT_IN_USE');
    await assert.rejects(d.client.deleteSnapshot(tpl.snapshot!), (e) => e instanceof KilnApiError && e.code === 'KILN_ERR_SNAPSHOT_IN_USE');
    await Promise.all(clones.map((c) => d.client.deleteVm(c.id)));
    await d.client.deleteTemplate(tpl.id);
    assert.deepEqual(await d.client.listSnapshots(), []);
    assert.deepEqual(await hostObjects(), { netns: [], links: [] });
  });
});
