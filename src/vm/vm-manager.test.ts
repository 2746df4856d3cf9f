// The VM lifecycle on fake layers (testing/fake-vm-layer.ts) and a real SQLite store: the
// provisioning lists and their edits, a boot to ready, stop and delete, and a failure at every
// step of a boot leaving nothing behind. test/ proves the same with real VMs.
import assert from 'node:assert/strict';
import fs from 'node:fs/promises';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { INTENT_FILE, readIntents } from './provision/spawn-intent.ts';
import { vmLayer, type VmLayer } from './testing/fake-vm-layer.ts';

let l: VmLayer;
before(async () => {
  l = await vmLayer();
});
after(async () => {
  await l.dispose();
});

const exists = (p: string) => fs.stat(p).then(() => true, () => false);

test('restore and classic are edits of the boot list, not paths of their own', () => {
  const { boot, classic, restore } = l.manager.stepNames();
  assert.deepEqual(boot, ['image.fetch', 'rootfs.prepare', 'network.prepare', 'vmm.spawn', 'vm.track', 'vm.booting']);
  assert.deepEqual(classic, boot, 'classic replaces rootfs.prepare in place');
  assert.deepEqual(restore, ['image.fetch', 'rootfs.prepare', 'network.prepare', 'vmm.restore', 'vm.track', 'vmm.resume', 'guest.identity', 'agent.await', 'vm.booting']);
});

test('a boot goes creating → booting → ready, with its intent on disk and its phases timed', async () => {
  const vm = await l.manager.create({ name: 'happy', network: 'none', memory_mib: 128 });
  assert.equal(vm.state, 'creating');
  const ready = await l.manager.waitFor(vm.id, ['ready'], 5000);
  const instance = l.driver.running().find((i) => i.pid === ready.pid);
  assert.ok(instance, 'the recorded pid is the running VMM');
  const [intent] = (await readIntents(path.join(l.stateDir, 'vms'))).filter((i) => i.vmId === vm.id);
  assert.equal(intent?.pid, ready.pid, 'the spawn intent names the VMM');
  assert.equal(intent?.cgroup, vm.id);
  const phases = (await l.store.listPhases(vm.id, 1)).map((p) => p.name);
  for (const p of ['api.accept', 'rootfs.prepare', 'vmm.spawn', 'guest.kernel', 'guest.init']) assert.ok(phases.includes(p), `${p} in ${phases}`);
  assert.ok(!phases.includes('vm.track') && !phases.includes('vm.booting'), 'bookkeeping steps are not phases');

  const stopped = await l.manager.stop(vm.id);
  assert.equal(stopped.state, 'stopped');
  assert.equal(stopped.exitCode, 0);
  await l.manager.delete(vm.id);
  assert.equal(await l.store.getVm(vm.id), null);
  assert.ok(!(await exists(l.manager.runtimeDir(vm.id))), 'runtime dir removed');
});

test('a VMM that dies while the guest boots fails the VM and releases it', async () => {
  l.driver.script = 'crash';
  try {
    const vm = await l.manager.create({ name: 'crashes', network: 'none', memory_mib: 128 });
    await assert.rejects(l.manager.waitFor(vm.id, ['ready'], 5000), /the fake VMM crashed/);
    assert.ok(!(await exists(l.manager.runtimeDir(vm.id))), 'a failed VM keeps no runtime dir');
    await l.manager.delete(vm.id);
  } finally {
    l.driver.script = 'ready';
  }
});

// Each case breaks one step; afterwards nothing the step list made may remain.
const failures: { step: string; network: 'bridge' | 'none'; arm: () => () => void; reason: RegExp }[] = [
  { step: 'rootfs.prepare', network: 'bridge', arm: () => ((l.volumes.failBuild = new Error('disk broke')), () => (l.volumes.failBuild = null)), reason: /disk broke/ },
  { step: 'network.prepare', network: 'bridge', arm: () => ((l.network.failPlug = new Error('no tap')), () => (l.network.failPlug = null)), reason: /no tap/ },
  { step: 'vmm.spawn', network: 'bridge', arm: () => ((l.driver.failStart = new Error('no qemu')), () => (l.driver.failStart = null)), reason: /no qemu/ },
  {
    step: 'vm.booting',
    network: 'none',
    arm: () => {
      const update = l.store.updateVm.bind(l.store);
      l.store.updateVm = async (id, patch) => {
        if (patch.state === 'booting') throw new Error('store refused');
        return update(id, patch);
      };
      return () => (l.store.updateVm = update);
    },
    reason: /store refused/,
  },
];

for (const f of failures) {
  test(`a failure at ${f.step} fails the VM and undoes every step before it`, async () => {
    const before = l.driver.running().length;
    const disarm = f.arm();
    let id: string;
    try {
      const vm = await l.manager.create({ name: `fail-${f.step}`, network: f.network, memory_mib: 128 });
      id = vm.id;
      await assert.rejects(l.manager.waitFor(vm.id, ['ready'], 5000), f.reason);
    } finally {
      disarm();
    }
    const vm = await l.manager.get(id);
    assert.equal(vm.state, 'failed');
    assert.match(vm.stateReason ?? '', f.reason);
    assert.equal(l.driver.running().length, before, 'no VMM left running');
    assert.ok(!l.network.taps.has(id), 'no tap left');
    assert.ok(!(await exists(l.manager.runtimeDir(id))), 'no runtime dir (and no spawn intent) left');
    await l.manager.delete(id);
  });
}

test('reconcile: a VM kilnd was creating is failed and the VMM its intent names is reaped', async () => {
  const vm = await l.manager.create({ name: 'interrupted', network: 'none', memory_mib: 128 });
  await l.manager.waitFor(vm.id, ['ready'], 5000);
  // As a crash between the intent and the pid's record would leave it.
  await l.store.updateVm(vm.id, { state: 'creating', pid: null });
  await l.manager.close();
  const reaped = l.driver.reaped.length;
  const dir = l.manager.runtimeDir(vm.id);
  assert.ok(await exists(path.join(dir, INTENT_FILE)));
  // A second manager on the same store and state dir: kilnd restarted.
  const { VmManager } = await import('./vm-manager.ts');
  const restarted = new VmManager((l.manager as unknown as { core: { deps: ConstructorParameters<typeof VmManager>[0] } }).core.deps);
  await restarted.reconcile();
  const after = await restarted.get(vm.id);
  assert.equal(after.state, 'failed');
  assert.match(after.stateReason ?? '', /kilnd stopped while the VM was being created/);
  assert.deepEqual(l.driver.reaped.slice(reaped), [vm.id], 'the intent\'s cgroup was reaped');
  assert.ok(!(await exists(dir)));
  await restarted.delete(vm.id);
  await restarted.close();
});

test('cold boots beyond the boot slots wait in creating, and go on when a slot frees', async () => {
  const one = await vmLayer({ maxConcurrentBoots: 1 });
  try {
    one.driver.script = 'hang';
    const a = await one.manager.create({ name: 'first', network: 'none', memory_mib: 128 });
    const b = await one.manager.create({ name: 'second', network: 'none', memory_mib: 128 });
    await one.manager.waitFor(a.id, ['booting'], 5000);
    await new Promise((r) => setTimeout(r, 200));
    assert.equal((await one.manager.get(b.id)).state, 'creating', 'the second waits for the only slot');
    one.driver.script = 'ready';
    // The first boot ends (deleted): its slot passes to the second, which boots to ready.
    await one.manager.delete(a.id);
    await one.manager.waitFor(b.id, ['ready'], 5000);
    const phases = (await one.store.listPhases(b.id, 1)).map((p) => p.name);
    assert.ok(phases.includes('boot.queue'), `the wait is in its timeline: ${phases}`);
  } finally {
    await one.dispose();
  }
});

test('stop: a VM still booting has no guest to ask: its VMM is killed at once', async () => {
  const f = await vmLayer();
  f.driver.script = 'hang';
  try {
    const vm = await f.manager.create({ name: 'stop-booting', network: 'none', memory_mib: 128 });
    const booting = await f.manager.waitFor(vm.id, ['booting'], 5000);
    assert.ok(booting.pid && f.driver.running().some((i) => i.pid === booting.pid));
    const t0 = performance.now();
    const stopped = await f.manager.stop(vm.id, 60_000);
    assert.equal(stopped.state, 'stopped');
    assert.ok(performance.now() - t0 < 5000, 'not after the 60 s grace period');
    assert.ok(!f.driver.running().some((i) => i.pid === booting.pid), 'the VMM is gone');
    await assert.rejects(f.manager.stop(vm.id + 'x'), /not found|no VM/i);
    await f.manager.delete(vm.id);
  } finally {
    await f.dispose();
  }
});

test('fencing kills every VMM without writing to the store, refuses boots, and unfencing lets them in again', async () => {
  const f = await vmLayer();
  try {
    const vm = await f.manager.create({ name: 'fenced', network: 'none', memory_mib: 128 });
    const ready = await f.manager.waitFor(vm.id, ['ready'], 5000);
    const killed = await f.manager.fence('the store is unreachable');
    assert.deepEqual(killed, [vm.id]);
    assert.ok(!f.driver.running().some((i) => i.pid === ready.pid), 'the VMM was killed');
    await new Promise((r) => setTimeout(r, 100));
    assert.equal((await f.store.getVm(vm.id))?.state, 'ready', 'nothing written: the rejoin records it');
    await assert.rejects(f.manager.create({ name: 'refused', network: 'none', memory_mib: 128 }), (e: { code?: string }) => e.code === 'KILN_ERR_NODE_UNAVAILABLE');
    // The rejoin records the fenced VM stopped, then unfences.
    await f.store.updateVm(vm.id, { state: 'stopped', pid: null });
    await f.manager.unfence([vm.id]);
    const again = await f.manager.create({ name: 'after-rejoin', network: 'none', memory_mib: 128 });
    await f.manager.waitFor(again.id, ['ready'], 5000);
    await f.manager.delete(again.id);
    await f.manager.delete(vm.id);
  } finally {
    await f.dispose();
  }
});
