import assert from 'node:assert/strict';
import { test } from 'node:test';
import { confinementChecks, evaluate, type Check, type ConfinementFacts, type HostFacts } from './checks.ts';

const bin = (path: string, version: string | null = null) => ({ path, version });

/** A host where everything is there: a KVM host set up for both backends. */
const good = (over: Partial<HostFacts> = {}): HostFacts => ({
  binaries: {
    qemu: bin('/usr/bin/qemu-system-x86_64', 'QEMU emulator version 7.2.22'),
    firecracker: bin('/usr/local/bin/firecracker', 'Firecracker v1.13.1'),
    jailer: bin('/usr/local/bin/jailer', 'Jailer v1.13.1'),
    ip: bin('/usr/sbin/ip'),
    nft: bin('/usr/sbin/nft'),
    mksquashfs: bin('/usr/bin/mksquashfs'),
    'mkfs.erofs': bin('/usr/bin/mkfs.erofs'),
    'mkfs.ext4': bin('/usr/sbin/mkfs.ext4'),
  },
  firecrackerName: 'firecracker',
  kvm: { present: true, openError: null },
  kvmProbe: { failure: null },
  cgroup: { v2: true, mount: '/sys/fs/cgroup', controllers: ['cpuset', 'cpu', 'io', 'memory', 'pids'] },
  vhostVsock: true,
  kernel: { path: '/a/vmlinuz', source: 'debian', format: 'bzImage', version: '6.1.0-56-cloud-amd64' },
  assetsDir: '/var/lib/kiln/assets',
  confinement: goodConfinement(),
  ...over,
});

function goodConfinement(over: Partial<ConfinementFacts> = {}): ConfinementFacts {
  return {
    settings: { seccomp: true, user: 'kiln-vmm', chroot: true, cgroup: true, memoryOverheadMib: 384 },
    user: { uid: 998, gid: 998 },
    canCreateUser: true,
    seccompRefused: null,
    cgroup: { version: 2, controllers: ['memory', 'cpu', 'pids'], reason: 'cgroup v2 at /sys/fs/cgroup (memory, cpu, pids)', writable: true },
    ...over,
  };
}

const find = (checks: Check[], scope: string, name: string) => {
  const c = checks.find((x) => x.scope === scope && x.name === name);
  assert.ok(c, `a ${scope}/${name} check`);
  return c;
};

test('a fully set-up KVM host: every check ok, both backends usable, no fixes', () => {
  const r = evaluate(good());
  assert.deepEqual(r.checks.filter((c) => c.status !== 'ok'), []);
  assert.deepEqual(r.backends, { qemu: { usable: true, summary: 'runs with KVM' }, firecracker: { usable: true, summary: 'runs (KVM)' } });
  assert.match(find(r.checks, 'firecracker', 'firecracker').detail, /v1\.13\.1/);
});

test('this development host: no firecracker, KVM that hangs guests, no vhost-vsock, hybrid cgroups', () => {
  const f = good({
    kvmProbe: { failure: 'the KVM probe guest did not reach kiln-init (timed out)' },
    vhostVsock: false,
    cgroup: { v2: true, mount: '/sys/fs/cgroup/unified', controllers: ['hugetlb'] },
  });
  f.binaries.firecracker = null;
  f.binaries.jailer = null;
  const r = evaluate(f);
  assert.equal(r.backends.qemu.usable, true);
  assert.match(r.backends.qemu.summary, /TCG.*KVM does not boot a guest here \(the KVM probe guest did not reach kiln-init/);
  assert.equal(r.backends.firecracker.usable, false);
  assert.match(r.backends.firecracker.summary, /firecracker not found on PATH/);
  assert.match(r.backends.firecracker.summary, /KVM does not boot a guest/);
  const fc = find(r.checks, 'firecracker', 'firecracker');
  assert.equal(fc.status, 'fail');
  assert.match(fc.fix!, /KILN_FIRECRACKER_BIN/);
  assert.equal(find(r.checks, 'firecracker', 'jailer').status, 'warn', 'the jailer is optional');
  const cg = find(r.checks, 'firecracker', 'cgroup v2');
  assert.equal(cg.status, 'warn');
  assert.match(cg.detail, /lacks the cpu, memory controller/);
  assert.match(cg.fix!, /systemd.unified_cgroup_hierarchy=1/);
  assert.match(find(r.checks, 'qemu', 'vsock').fix!, /modprobe vhost_vsock/);
  for (const c of r.checks.filter((x) => x.status !== 'ok')) assert.ok(c.fix, `${c.scope}/${c.name} has a fix`);
});

test('/dev/kvm absent or not openable: failed with the fix; QEMU still usable (TCG), Firecracker not', () => {
  const absent = evaluate(good({ kvm: { present: false, openError: 'ENOENT' }, kvmProbe: null }));
  assert.match(find(absent.checks, 'host', '/dev/kvm').fix!, /modprobe kvm_intel/);
  assert.equal(absent.backends.qemu.usable, true);
  assert.equal(absent.backends.firecracker.usable, false);
  assert.match(absent.backends.firecracker.summary, /\/dev\/kvm is absent/);
  const denied = evaluate(good({ kvm: { present: true, openError: 'EACCES' } }));
  const c = find(denied.checks, 'host', '/dev/kvm');
  assert.equal(c.status, 'fail');
  assert.match(c.detail, /EACCES/);
  assert.match(c.fix!, /kvm/);
  assert.ok(!denied.checks.some((x) => x.name === 'KVM boots a guest'), 'no probe verdict claimed when KVM cannot even open');
});

test('KVM not probed yet: a warning that says how to probe; Firecracker not claimed usable', () => {
  const r = evaluate(good({ kvmProbe: null }));
  const c = find(r.checks, 'host', 'KVM boots a guest');
  assert.equal(c.status, 'warn');
  assert.match(c.fix!, /kiln serve.*accel-probe\.json/);
  assert.equal(r.backends.firecracker.usable, false);
});

test('Firecracker versions: < 1.13 fails, 1.13–1.16 ok, newer warns, unparsable fails', () => {
  const at = (v: string | null) => {
    const f = good();
    f.binaries.firecracker = bin('/fc', v);
    return find(evaluate(f).checks, 'firecracker', 'firecracker');
  };
  assert.equal(at('Firecracker v1.12.1').status, 'fail');
  assert.equal(at('Firecracker v1.16.1').status, 'ok');
  assert.equal(at('Firecracker v1.17.0').status, 'warn');
  assert.equal(at(null).status, 'fail');
  const named = good({ firecrackerName: '/opt/fc/firecracker' });
  named.binaries.firecracker = null;
  assert.equal(find(evaluate(named).checks, 'firecracker', 'firecracker').detail, '/opt/fc/firecracker not found');
});

test('kernel formats: an ELF without PVH blocks QEMU only; a bad KILN_KERNEL blocks both; none yet only warns', () => {
  const elfNoPvh = evaluate(good({ kernel: { path: '/k/vmlinux', source: 'user', format: 'elf', pvh: false } }));
  assert.equal(find(elfNoPvh.checks, 'qemu', 'kernel format').status, 'fail');
  assert.match(find(elfNoPvh.checks, 'qemu', 'kernel format').fix!, /CONFIG_PVH=y/);
  assert.equal(find(elfNoPvh.checks, 'firecracker', 'kernel format').status, 'ok');
  assert.equal(elfNoPvh.backends.qemu.usable, false);
  assert.equal(elfNoPvh.backends.firecracker.usable, true);
  const bad = evaluate(good({ kernel: { missing: '/k/x is neither a bzImage nor an ELF vmlinux', user: true } }));
  assert.equal(bad.backends.qemu.usable, false);
  assert.equal(bad.backends.firecracker.usable, false);
  const none = evaluate(good({ kernel: { missing: 'no Debian kernel yet', user: false } }));
  assert.equal(find(none.checks, 'host', 'guest kernel').status, 'warn');
  assert.equal(none.backends.qemu.usable, true);
});

test('host tools: required ones block both backends, mkfs.erofs only warns', () => {
  const f = good();
  f.binaries.nft = null;
  f.binaries['mkfs.erofs'] = null;
  const r = evaluate(f);
  assert.match(find(r.checks, 'host', 'nft').fix!, /apt-get install nftables/);
  assert.equal(find(r.checks, 'host', 'mkfs.erofs').status, 'warn');
  assert.equal(r.backends.qemu.usable, false);
  assert.equal(r.backends.firecracker.usable, false);
  assert.match(r.backends.qemu.summary, /nft: not found/);
});

test('confinement: every piece ok on a set-up host; each one off says why and how to turn it on', () => {
  const ok = confinementChecks(goodConfinement());
  assert.deepEqual(ok.map((c) => [c.name, c.status]), [['seccomp sandbox', 'ok'], ['VMM user', 'ok'], ['chroot', 'ok'], ['per-VM cgroup', 'ok']]);
  assert.match(find(ok, 'qemu', 'per-VM cgroup').detail, /guest RAM \+ 384 MiB/);

  const byName = (f: ConfinementFacts) => new Map(confinementChecks(f).map((c) => [c.name, c]));
  const off = byName(goodConfinement({ settings: { seccomp: false, user: null, chroot: true, cgroup: false, memoryOverheadMib: 384 } }));
  assert.match(off.get('seccomp sandbox')!.detail, /KILN_VMM_SECCOMP=0/);
  assert.match(off.get('VMM user')!.detail, /runs as root/);
  assert.match(off.get('chroot')!.detail, /needs the VMM user/);
  assert.match(off.get('per-VM cgroup')!.detail, /KILN_VMM_CGROUP=0/);
  for (const c of off.values()) assert.ok(c.status === 'warn' && c.fix, `${c.name} is a warning with a fix`);

  const host = byName(goodConfinement({ user: null, canCreateUser: false, seccompRefused: 'seccomp support is disabled', cgroup: { version: null, controllers: [], reason: 'no cgroup2 mount; no cgroup v1 hierarchy for pids', writable: false } }));
  assert.match(host.get('seccomp sandbox')!.detail, /seccomp support is disabled/);
  assert.match(host.get('VMM user')!.detail, /useradd is missing/);
  assert.match(host.get('per-VM cgroup')!.detail, /no cgroup v1 hierarchy for pids/);
  assert.equal(byName(goodConfinement({ user: null })).get('VMM user')!.status, 'ok', 'kilnd creates a missing user');
});
