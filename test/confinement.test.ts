// VMM confinement on a real QEMU VM (issue 13, acceptance 3): the QEMU of a kiln VM runs as
// the unprivileged user, under seccomp, chrooted, in its own cgroup with the memory cap;
// killing that cgroup kills the VM and kilnd records it; a restarted kilnd sweeps cgroups of
// VMs it does not own; `kiln doctor` reports each piece.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import fs from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import { after, before, describe, test } from 'node:test';
import type { DoctorReport } from '../src/doctor/checks.ts';
import { lookupUser } from '../src/tools/useradd.ts';
import type { CgroupManager } from '../src/vmm/cgroup/cgroup.ts';
import { detectCgroups } from '../src/vmm/cgroup/detect.ts';
import { vmmMemoryOverheadMib } from '../src/config.ts';
import { defaultCgroupParent } from '../src/vmm/qemu/confinement.ts';
import { startKilnd, waitForState, type TestDaemon } from './helpers/kilnd.ts';
import { until } from './helpers/until.ts';

const skip = (process.env.KILN_BACKEND ?? 'qemu') !== 'qemu' && (process.env.KILN_BACKEND ?? 'auto') !== 'auto' ? 'QEMU confinement' : false;
const MIB = 1024 * 1024;

let d: TestDaemon;
let cgroups: CgroupManager;

before(async () => {
  if (skip) return;
  d = await startKilnd({ backend: 'qemu' });
  const found = await detectCgroups({ parent: defaultCgroupParent(d.stateDir) });
  assert.ok(found.manager, found.reason);
  cgroups = found.manager;
});

after(() => d?.dispose());

async function status(pid: number): Promise<Record<string, string>> {
  const text = await fs.readFile(`/proc/${pid}/status`, 'utf8');
  return Object.fromEntries(text.split('\n').filter(Boolean).map((l) => [l.slice(0, l.indexOf(':')), l.slice(l.indexOf(':') + 1).trim()]));
}

async function cgroupOf(pid: number): Promise<string> {
  return fs.readFile(`/proc/${pid}/cgroup`, 'utf8');
}

describe('VMM confinement (QEMU)', { skip }, () => {
  test('/healthz reports every piece active on this host', async () => {
    const h = (await d.client.health()) as unknown as { confinement: Record<string, { active: boolean; detail: string; version?: number }> };
    for (const piece of ['seccomp', 'user', 'chroot', 'cgroup']) assert.equal(h.confinement[piece]?.active, true, `${piece}: ${h.confinement[piece]?.detail}`);
    assert.equal(h.confinement.cgroup!.version, cgroups.version);
    assert.match(h.confinement.seccomp!.detail, /spawn=deny/);
  });

  test('a VM’s QEMU: unprivileged uid, seccomp filter, empty chroot, in its cgroup with the memory cap; killing the cgroup fails the VM', async () => {
    const vm = await d.client.createVm({ name: 'confined', memory_mib: 256, vcpus: 1 }, { wait: true });
    const pid = vm.pid!;
    assert.ok(pid > 0);
    const user = (await lookupUser('kiln-vmm'))!;
    assert.ok(user, 'kilnd created the kiln-vmm user');
    const st = await status(pid);
    assert.equal(st.Uid, `${user.uid}\t${user.uid}\t${user.uid}\t${user.uid}`, `QEMU uids (real, effective, saved, fs): ${st.Uid}`);
    assert.equal(st.Gid, `${user.gid}\t${user.gid}\t${user.gid}\t${user.gid}`);
    assert.equal(st.Seccomp, '2', 'seccomp filter mode');
    assert.equal(st.NoNewPrivs, '1');
    assert.equal(st.CapEff, '0000000000000000', 'no capabilities');
    assert.equal(await fs.readlink(`/proc/${pid}/root`), path.join(d.stateDir, 'vms', vm.id, 'jail'));
    assert.deepEqual(await fs.readdir(path.join(d.stateDir, 'vms', vm.id, 'jail')), [], 'the chroot is empty');

    const cg = (await cgroups.open(vm.id))!;
    assert.ok(cg, `cgroup ${vm.id} exists`);
    assert.deepEqual(await cg.pids(), [pid], 'QEMU, and only QEMU, is in the cgroup');
    const membership = await cgroupOf(pid);
    for (const c of ['memory', 'pids', 'cpu']) {
      assert.match(membership, new RegExp(`(^|\\n)\\d+:[^:\\n]*\\b${cgroups.version === 2 ? '' : c}\\b[^:\\n]*:/${defaultCgroupParent(d.stateDir)}/${vm.id}\\n`), `${c}: ${membership}`);
    }
    const cap = Number((await fs.readFile(cg.memoryLimitFile, 'utf8')).trim());
    assert.equal(cap, (256 + vmmMemoryOverheadMib(vm.accelerator as 'kvm' | 'tcg')) * MIB);
    // Charged from QEMU's first page: its guest RAM as it boots is in the cgroup's usage.
    const usageFile = cgroups.version === 2 ? path.join(cg.dirs.unified!, 'memory.current') : path.join(cg.dirs.memory!, 'memory.usage_in_bytes');
    const usage = Number((await fs.readFile(usageFile, 'utf8')).trim());
    assert.ok(usage > 20 * MIB && usage < cap, `memory usage ${usage} within (20 MiB, cap)`);

    // The VM can still do its work confined: exec in the guest.
    const r = await d.client.exec(vm.id, { cmd: ['/bin/sh', '-c', 'echo confined-ok'] });
    assert.match(r.stdout, /confined-ok/);

    // Killing the cgroup (as kilnd's kill does) kills QEMU; kilnd sees the VMM gone.
    await cg.kill();
    await until('QEMU to be gone', async () => {
      const s = await status(pid).catch(() => null);
      return !s || s.State!.startsWith('Z');
    }, 5000, 20);
    const failed = await waitForState(d.client, vm.id, ['failed'], 30_000);
    assert.match(failed.state_reason ?? '', /VMM process exited unexpectedly/);
    await until('the dead VM’s cgroup to be removed', async () => (await cgroups.open(vm.id)) === null, 10_000, 50);
    await d.client.deleteVm(vm.id);
  });

  test('kiln’s own stop and delete remove the cgroup; a restarted kilnd sweeps strays and keeps live VMs’ cgroups', async () => {
    const live = await d.client.createVm({ name: 'survivor' }, { wait: true });
    const gone = await d.client.createVm({ name: 'to-stop' }, { wait: true });
    assert.ok(await cgroups.open(gone.id));
    await d.client.stopVm(gone.id);
    assert.equal(await cgroups.open(gone.id), null, 'a stopped VM has no cgroup');
    await d.client.deleteVm(gone.id);

    const stray = await cgroups.create('vm-stray-from-a-crash', { memoryBytes: 64 * MIB, cpus: 1, pids: 8 });
    await d.stop();
    const d2 = await startKilnd({ stateDir: d.stateDir, network: d.network, backend: 'qemu' });
    d = d2;
    assert.deepEqual(await cgroups.list(), [live.id], 'the stray is swept, the live VM keeps its cgroup');
    assert.equal(await stray.pids().then((p) => p.length), 0);
    const again = await d.client.getVm(live.id);
    assert.equal(again.state, 'ready');
    assert.deepEqual(await (await cgroups.open(live.id))!.pids(), [again.pid!]);
    await d.client.deleteVm(live.id);
    assert.deepEqual(await cgroups.list(), []);
  });

  test('kiln doctor reports each confinement piece', async () => {
    const { stdout } = await promisify(execFile)(process.execPath, [path.resolve('bin/kiln.js'), '--json', 'doctor'], { env: { ...process.env, KILN_FIRECRACKER_BIN: '' } }).catch(
      (e: { stdout: string }) => ({ stdout: e.stdout }),
    );
    const r = JSON.parse(stdout) as DoctorReport;
    const byName = new Map(r.checks.filter((c) => c.scope === 'qemu').map((c) => [c.name, c]));
    for (const n of ['seccomp sandbox', 'VMM user', 'chroot', 'per-VM cgroup']) assert.equal(byName.get(n)?.status, 'ok', `${n}: ${JSON.stringify(byName.get(n))}`);
    assert.match(byName.get('per-VM cgroup')!.detail, cgroups.version === 1 ? /cgroup v1/ : /cgroup v2/);
  });
});
