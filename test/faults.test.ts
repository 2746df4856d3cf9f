// The fault suite: kilnd is SIGKILLed at each provisioning step of a boot and of a template
// clone, in the middle of a snapshot, during an image pull + convert, and while ten creates
// are in flight; then restarted on the same state dir. A VMM is SIGKILLed; the state disk
// fills up during a snapshot. The crash is placed by a failpoint (KILN_FAILPOINTS, src/util/failpoints.ts)
// at an exact timeline step, or by the VM's own state events: never by a sleep. After each
// restart every VM must be ready (re-attached) or failed with its resources gone, and the host
// must hold nothing the store does not own: no VMM process, tap, clone namespace, nftables
// rule, runtime dir or snapshot dir. Every create kilnd acknowledged before the crash is still
// in the store.
import assert from 'node:assert/strict';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, afterEach, before, describe, test } from 'node:test';
import { tableName, NFT_FAMILY } from '../src/net/ruleset.ts';
import { tapName } from '../src/net/network-manager.ts';
import { CLONE_NETNS_PREFIX, cloneNetnsName } from '../src/net/clone-netns.ts';
import type { KilnClient, Vm } from '../src/sdk/client.ts';
import { listLinks, listNetns } from '../src/tools/ip.ts';
import { nftListTable } from '../src/tools/nft.ts';
import { run } from '../src/util/process.ts';
import { BACKEND_SKIP as skip } from './helpers/backend.ts';
import { expectApiError } from './helpers/api-errors.ts';
import { startRegistry, type TestRegistry } from './helpers/registry.ts';
import { OciLayoutBuilder, buildTestImages, pushTestImages, type PushedTestImages } from './helpers/test-images.ts';
import { freePort } from './helpers/ports.ts';
import { startKilnd, testNetwork, vmmPids, waitForState, type TestDaemon, type TestNetwork } from './helpers/kilnd.ts';

const BOOT_STEPS = ['rootfs.prepare', 'network.prepare', 'vmm.spawn'];
const CLONE_STEPS = ['rootfs.prepare', 'network.prepare', 'vmm.spawn', 'vmm.load', 'vmm.resume', 'guest.identity'];
const CRASH_DEADLINE_MS = 120_000;

let stateDir: string;
let network: TestNetwork;
let d: TestDaemon | null = null;
let template: string;

/** A daemon on the suite's state dir and network, with failpoints armed if given. */
async function daemon(failpoints?: string): Promise<TestDaemon> {
  const env: Record<string, string> = failpoints ? { KILN_FAILPOINTS: failpoints } : {};
  const started = await startKilnd({ stateDir, network, env });
  stateDir = started.stateDir;
  return started;
}

/** Restarts kilnd with `point` armed, runs `act`, waits for the crash, restarts it clean. */
async function crashAt(point: string, act: (c: KilnClient) => Promise<unknown>): Promise<{ acknowledged: string[] }> {
  await d?.stop();
  const armed = await daemon(`${point}=crash`);
  const exited = new Promise<number | null>((r) => armed.proc.once('exit', (_code, signal) => r(signal === 'SIGKILL' ? 9 : null)));
  const acknowledged: string[] = [];
  const acting = act(armed.client).then(
    (v) => acknowledged.push(...ids(v)),
    () => {},
  );
  const timer = new Promise<never>((_, rej) => setTimeout(() => rej(new Error(`kilnd did not reach ${point} within ${CRASH_DEADLINE_MS} ms:\n${armed.output().slice(-3000)}`)), CRASH_DEADLINE_MS).unref());
  assert.equal(await Promise.race([exited, timer]), 9, 'kilnd died of SIGKILL');
  assert.match(armed.output(), new RegExp(`kiln failpoint ${point.replace('.', '\\.')}: crashing`));
  await acting;
  d = await daemon();
  return { acknowledged };
}

function ids(v: unknown): string[] {
  if (Array.isArray(v)) return v.flatMap(ids);
  return v && typeof v === 'object' && 'id' in v ? [String((v as Vm).id)] : [];
}

/**
 * Every VM settles (ready, failed or stopped) and the host holds exactly what the store owns.
 * Returns the VMs by state.
 */
async function assertNothingUnowned(what: string): Promise<Map<string, Vm[]>> {
  const c = d!.client;
  const settled: Vm[] = [];
  for (const vm of await c.listVms()) settled.push(await waitForState(c, vm.id, ['ready', 'failed', 'stopped'], 180_000));
  const byState = new Map<string, Vm[]>();
  for (const vm of settled) byState.set(vm.state, [...(byState.get(vm.state) ?? []), vm]);
  const ready = byState.get('ready') ?? [];
  const at = `after a crash at ${what}`;

  const pids = (await vmmPids(path.join(stateDir, 'vms'))).sort();
  assert.deepEqual(pids, ready.map((v) => v.pid!).sort(), `${at}: VMM processes are exactly the ready VMs' (${ready.map((v) => v.id)})`);
  const taps = (await listLinks({ master: network.bridge })).map((l) => l.ifname).sort();
  assert.deepEqual(taps, ready.map((v) => tapName(v.id)).sort(), `${at}: taps on the bridge are exactly the ready VMs'`);
  // Namespaces are host-wide: the ones to check are those named after this suite's VMs.
  const namespaces = new Set((await listNetns()).filter((n) => n.startsWith(CLONE_NETNS_PREFIX)));
  for (const v of settled) if (v.state !== 'ready') assert.ok(!namespaces.has(cloneNetnsName(v.id)), `${at}: ${v.id} (${v.state}) has no namespace left`);
  const rules = await nftListTable(NFT_FAMILY, tableName(network.bridge));
  for (const v of settled) if (v.state !== 'ready') assert.ok(!rules.includes(v.id), `${at}: no nftables rule names ${v.id} (${v.state})`);
  for (const v of ready) for (const p of v.ports) assert.ok(rules.includes(`dport ${p.host}`), `${at}: ready ${v.id}'s port ${p.host} is published`);
  const dirs = (await fs.readdir(path.join(stateDir, 'vms')).catch(() => [] as string[])).sort();
  const live = settled.filter((v) => v.state !== 'failed').map((v) => v.id);
  for (const dir of dirs) assert.ok(live.includes(dir), `${at}: runtime dir ${dir} belongs to a VM that is not failed`);
  const snapshots = new Set((await c.listSnapshots()).map((s) => s.id));
  for (const dir of await fs.readdir(path.join(stateDir, 'snapshots')).catch(() => [] as string[])) {
    assert.ok(snapshots.has(dir), `${at}: snapshot dir ${dir} has a record`);
  }
  return byState;
}

async function deleteAll(): Promise<void> {
  for (const vm of await d!.client.listVms()) await d!.client.deleteVm(vm.id);
}

before(async () => {
  if (skip) return;
  network = testNetwork();
  d = await daemon();
  stateDir = d.stateDir;
  template = (await d.client.createTemplate('default', { memoryMib: 128 })).id;
});

after(async () => {
  await d?.dispose();
});

// Each case starts from an empty daemon, whatever the previous one left (it may have failed).
afterEach(async () => {
  if (d && d.proc.exitCode === null && d.proc.signalCode === null) await deleteAll();
});

describe('kilnd SIGKILLed during a boot', { skip }, () => {
  for (const step of BOOT_STEPS) {
    for (const when of ['before', 'after']) {
      test(`at ${step}:${when}: the VM is failed and nothing of it is left`, async () => {
        const port = await freePort();
        const { acknowledged } = await crashAt(`${step}:${when}`, (c) => c.createVm({ name: `boot-${step}-${when}`, memory_mib: 128, ports: [{ host: port, guest: 80 }] }));
        const byState = await assertNothingUnowned(`${step}:${when}`);
        // The record is made before any step runs, so it survives as failed; the 201 may or may
        // not have left kilnd before it died, and if it did, it names that record.
        const failed = byState.get('failed') ?? [];
        assert.equal(failed.length, 1, 'the VM record survived the crash, failed');
        for (const id of acknowledged) assert.equal(id, failed[0]!.id);
        assert.match(failed[0]!.state_reason ?? '', /kilnd stopped while the VM was being created/);
      });
    }
  }

  test('while the guest boots: the VM is re-attached and becomes ready', async () => {
    await d?.stop();
    d = await daemon();
    const vm = await d.client.createVm({ name: 'boot-guest', memory_mib: 128 });
    // Placed by the VM's own state event: booting means the VMM runs and its pid is recorded.
    await waitForState(d.client, vm.id, ['booting', 'ready']);
    await d.kill();
    d = await daemon();
    const byState = await assertNothingUnowned('guest boot');
    assert.deepEqual((byState.get('ready') ?? []).map((v) => v.id), [vm.id]);
    const r = await d.client.exec(vm.id, { cmd: ['/bin/echo', 'alive'] });
    assert.equal(r.stdout.trim(), 'alive');
  });
});

describe('kilnd SIGKILLed during a template clone', { skip }, () => {
  for (const step of CLONE_STEPS) {
    for (const when of ['before', 'after']) {
      test(`at ${step}:${when}: the clone is failed or ready, and nothing unowned is left`, async () => {
        const { acknowledged } = await crashAt(`${step}:${when}`, (c) => c.createVm({ name: `clone-${step}-${when}`, template }));
        const byState = await assertNothingUnowned(`clone ${step}:${when}`);
        const vms = [...byState.values()].flat();
        // A clone's create answers once its VMM runs: a crash before that loses no acknowledged VM.
        for (const id of acknowledged) assert.ok(vms.some((v) => v.id === id), `acknowledged clone ${id} is in the store`);
        assert.equal(vms.length, 1, 'the clone record exists (failed or ready)');
      });
    }
  }
});

describe('kilnd SIGKILLed during a snapshot', { skip }, () => {
  for (const point of ['snapshot.rename:before', 'snapshot.rename:after']) {
    test(`at ${point}: no snapshot dir without a record, the source VM re-attached`, async () => {
      await d?.stop();
      d = await daemon();
      const vm = await d.client.createVm({ name: `snap-src-${point.slice(-5)}`, memory_mib: 128 }, { wait: true });
      const before = (await d.client.listSnapshots()).length;
      await crashAt(point, (c) => c.createSnapshot(vm.id));
      const byState = await assertNothingUnowned(point);
      assert.equal((await d!.client.listSnapshots()).length, before, 'the interrupted snapshot was never recorded');
      // The source was paused for the snapshot when kilnd died: it comes back as a VM kilnd owns.
      assert.equal([...byState.values()].flat().length, 1);
    });
  }
});

describe('kilnd SIGKILLed with ten creates in flight', { skip }, () => {
  test('every acknowledged create is in the store, ready or failed; nothing unowned', async () => {
    await d?.stop();
    d = await daemon();
    const c = d.client;
    const events = await c.subscribe({});
    const creates = Array.from({ length: 10 }, (_, i) => c.createVm(i % 2 ? { name: `burst-${i}`, template } : { name: `burst-${i}`, memory_mib: 128 }));
    const acknowledged: string[] = [];
    for (const p of creates) p.then((v) => acknowledged.push(v.id), () => {});
    // Kill when three VMs have a running VMM: the others are somewhere in their steps.
    let booting = 0;
    const deadline = Date.now() + CRASH_DEADLINE_MS;
    for await (const e of events) {
      if (e.type === 'vm.state' && (e.to === 'booting' || e.to === 'ready') && ++booting >= 3) break;
      assert.ok(Date.now() < deadline, 'three VMs booting within the deadline');
    }
    const known = [...acknowledged];
    await d.kill();
    await Promise.allSettled(creates);
    d = await daemon();
    const byState = await assertNothingUnowned('ten creates in flight');
    const all = [...byState.values()].flat().map((v) => v.id);
    for (const id of known) assert.ok(all.includes(id), `acknowledged create ${id} survived the crash`);
    assert.ok((byState.get('ready') ?? []).length >= 3, 'the VMs that were booting were re-attached');
  });
});

/**
 * What the state dir holds of images: images/ entries, and the blob store's files (blobs of
 * `blobs/<algorithm>/<hex>`, partial downloads in `blobs/tmp/`). Empty directories are no leak.
 */
async function imageFiles(): Promise<string[]> {
  const ls = (dir: string) => fs.readdir(path.join(stateDir, dir)).catch(() => [] as string[]);
  const out = (await ls('images')).map((f) => `images/${f}`);
  for (const sub of await ls('blobs')) for (const f of await ls(`blobs/${sub}`)) out.push(`blobs/${sub}/${f}`);
  return out.sort();
}

describe('kilnd SIGKILLed during an image pull + convert', { skip }, () => {
  let registry: TestRegistry;
  let pushed: PushedTestImages;
  before(async () => {
    registry = await startRegistry();
    const builder = await OciLayoutBuilder.create();
    await buildTestImages(builder);
    pushed = await pushTestImages(builder, registry.url, registry.host);
  });
  after(async () => {
    await pushed?.builder.remove();
    await registry?.stop();
  });

  // pull:after: every layer is in the blob store, nothing converted. convert:after: the
  // root filesystem file is in its final place, the record still says pulling.
  for (const point of ['image.pull:after', 'image.convert:after']) {
    test(`at ${point}: no pulling record, no image file or blob that no record owns; the pull then succeeds`, async () => {
      const ref = pushed.features;
      const filesBefore = await imageFiles();
      await crashAt(point, (c) => c.pullImage({ ref }, { wait: true }));
      const c = d!.client;
      assert.ok(!(await c.listImages()).some((i) => i.name === ref), `${point}: the interrupted pull left no image record`);
      // A subset: the restart's sweep may also take blobs an earlier image delete left for GC.
      const left = (await imageFiles()).filter((f) => !filesBefore.includes(f));
      assert.deepEqual(left, [], `${point}: no image file, staging tree or blob of the interrupted pull is left`);
      const again = await c.pullImage({ ref }, { wait: true });
      assert.equal(again.state, 'ready', 'the same pull succeeds after the restart');
      await c.deleteImage(again.id);
    });
  }
});

describe('a VMM SIGKILLed', { skip }, () => {
  test('its VM is failed with the reason, and nothing of it is left', async () => {
    const vm = await d!.client.createVm({ name: 'vmm-killed', memory_mib: 128 }, { wait: true });
    process.kill(vm.pid!, 'SIGKILL');
    const failed = await waitForState(d!.client, vm.id, ['failed'], 60_000);
    assert.match(failed.state_reason ?? '', /KILN_ERR_VMM_FAILED/);
    const byState = await assertNothingUnowned('VMM SIGKILL');
    assert.deepEqual((byState.get('failed') ?? []).map((v) => v.id), [vm.id]);
  });
});

describe('the state disk full during a snapshot', { skip }, () => {
  test('KILN_ERR_NO_SPACE; the VM runs on, no snapshot dir or record is left; with space it succeeds', async () => {
    // A kilnd of its own: its snapshots dir is a tiny tmpfs (the suite's holds the template).
    const own = await fs.mkdtemp(path.join(os.tmpdir(), 'kiln-test-snapfull-'));
    const snaps = path.join(own, 'snapshots');
    await fs.mkdir(snaps);
    await run('mount', ['-t', 'tmpfs', '-o', 'size=8m', 'kiln-test-snapfull', snaps]);
    const full = await startKilnd({ stateDir: own });
    try {
      const vm = await full.client.createVm({ name: 'snap-full', memory_mib: 128 }, { wait: true });
      await expectApiError(full.client.createSnapshot(vm.id), 507, 'KILN_ERR_NO_SPACE');
      assert.deepEqual(await fs.readdir(snaps), [], 'no snapshot dir, temporary or final');
      assert.deepEqual(await full.client.listSnapshots(), [], 'no snapshot record');
      assert.equal((await full.client.getVm(vm.id)).state, 'ready');
      const r = await full.client.exec(vm.id, { cmd: ['/bin/echo', 'still-running'] });
      assert.equal(r.stdout.trim(), 'still-running', 'the guest was resumed');
      await run('mount', ['-o', 'remount,size=1g', snaps]);
      const snap = await full.client.createSnapshot(vm.id);
      assert.ok((await fs.readdir(snaps)).includes(snap.id));
      await full.client.deleteVm(vm.id);
      await full.client.deleteSnapshot(snap.id);
    } finally {
      await full.stop();
      await run('umount', [snaps]).catch(() => {});
      await full.dispose();
    }
  });
});
