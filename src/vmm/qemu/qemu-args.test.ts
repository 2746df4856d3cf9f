import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { VmSpec } from '../driver.ts';
import { deviceNetArgs, hostTscKhz, kernelCmdline, qemuArgs, sandboxArgs } from './qemu-args.ts';

const spec: VmSpec = {
  id: 'vm-1',
  runtimeDir: '/state/vms/vm-1',
  vcpus: 2,
  memoryMib: 256,
  accelerator: 'tcg',
  kernel: { path: '/k/vmlinuz', initrd: '/k/initrd.cpio', cmdline: 'console=ttyS0' },
  drives: [
    { id: 'root', path: '/img/rootfs.squashfs', readOnly: true },
    { id: 'scratch', path: '/state/vms/vm-1/scratch.ext4', readOnly: false },
  ],
};

test('microvm with the TCG-safe machine options, drives in order with serials', () => {
  const a = qemuArgs(spec, { daemonize: true });
  assert.equal(a[a.indexOf('-M') + 1], 'microvm,isa-serial=on,rtc=on,pit=on,pic=on');
  assert.equal(a[a.indexOf('-accel') + 1], 'tcg,tb-size=256', 'a bounded translation cache (its cgroup counts it)');
  assert.ok(!a.includes('-cpu'), 'no host CPU model under TCG');
  assert.equal(a[a.indexOf('-m') + 1], '256M');
  assert.equal(a[a.indexOf('-smp') + 1], '2');
  const devices = a.filter((_, i) => a[i - 1] === '-device');
  assert.deepEqual(devices, ['virtio-blk-device,drive=root,serial=root', 'virtio-blk-device,drive=scratch,serial=scratch']);
  assert.match(a.filter((_, i) => a[i - 1] === '-drive')[0]!, /readonly=on/);
  assert.ok(a.includes('-daemonize'));
  assert.ok(a.includes('-no-reboot'));
  assert.match(a[a.indexOf('-qmp') + 1]!, /^unix:\/state\/vms\/vm-1\/qmp.sock,server=on,wait=off$/);
  assert.match(a[a.indexOf('-chardev') + 1]!, /logfile=\/state\/vms\/vm-1\/console.log,logappend=on/);
});

test('KVM gets the host CPU model; no -daemonize when asked', () => {
  const a = qemuArgs({ ...spec, accelerator: 'kvm' }, { daemonize: false });
  assert.equal(a[a.indexOf('-cpu') + 1], 'host');
  assert.ok(!a.includes('-daemonize'));
});

test('kernel command line pins the TSC rate only under TCG', () => {
  assert.equal(kernelCmdline('tcg', ['foo=1'], 2445404), 'console=ttyS0 quiet panic=-1 tsc_early_khz=2445404 foo=1');
  assert.equal(kernelCmdline('kvm', []), 'console=ttyS0 quiet panic=-1');
});

test('host TSC rate comes from /proc/cpuinfo, with a fallback', () => {
  assert.equal(hostTscKhz('processor\t: 0\ncpu MHz\t\t: 2445.404\n'), 2445404);
  assert.equal(hostTscKhz('nothing here'), 2000000);
});

test('each NIC is a tap netdev (no scripts) plus a virtio-net-device with its MAC, in order', () => {
  const a = qemuArgs(
    { ...spec, nics: [{ tap: 'kt-vm1', mac: '52:54:0a:76:00:02' }, { tap: 'kt-vm1b', mac: '52:54:0a:76:00:03' }] },
    { daemonize: true },
  );
  const netdevs = a.filter((_, i) => a[i - 1] === '-netdev');
  assert.deepEqual(netdevs, ['tap,id=net0,ifname=kt-vm1,script=no,downscript=no', 'tap,id=net1,ifname=kt-vm1b,script=no,downscript=no']);
  const nets = a.filter((x, i) => a[i - 1] === '-device' && x.startsWith('virtio-net-device'));
  assert.deepEqual(nets, ['virtio-net-device,netdev=net0,mac=52:54:0a:76:00:02', 'virtio-net-device,netdev=net1,mac=52:54:0a:76:00:03']);
  // The NIC follows its netdev, so the guest's eth0 is the first tap.
  assert.ok(a.indexOf('tap,id=net0,ifname=kt-vm1,script=no,downscript=no') < a.indexOf('virtio-net-device,netdev=net0,mac=52:54:0a:76:00:02'));
});

test('no NICs: no netdev at all (QEMU adds none with -nodefaults)', () => {
  const a = qemuArgs({ ...spec, nics: [] }, { daemonize: true });
  assert.ok(!a.includes('-netdev'));
  assert.deepEqual(deviceNetArgs(spec, {}), []);
});

test('vsock becomes vhost-vsock only where the host has /dev/vhost-vsock', () => {
  const withVsock: VmSpec = { ...spec, vsock: { guestCid: 7 } };
  assert.deepEqual(deviceNetArgs(withVsock, { vhostVsock: true }), ['-device', 'vhost-vsock-device,guest-cid=7']);
  assert.deepEqual(deviceNetArgs(withVsock, { vhostVsock: false }), []);
  const a = qemuArgs(withVsock, { daemonize: true, vhostVsock: true });
  assert.equal(a.filter((x) => x.startsWith('vhost-vsock-device')).length, 1);
  assert.ok(!qemuArgs(withVsock, { daemonize: true }).some((x) => x.includes('vhost-vsock')));
});

test('guest RAM in a file: a memory-backend-file the machine uses, shared for templates, private for clones', () => {
  const shared = qemuArgs({ ...spec, memoryFile: { path: '/s/tpl/memory', shared: true } }, { daemonize: true });
  assert.equal(shared[shared.indexOf('-M') + 1], 'microvm,isa-serial=on,rtc=on,pit=on,pic=on,memory-backend=ram');
  assert.equal(shared[shared.indexOf('-object') + 1], 'memory-backend-file,id=ram,size=256M,mem-path=/s/tpl/memory,share=on');
  const clone = qemuArgs({ ...spec, memoryFile: { path: '/s/tpl/memory', shared: false } }, { daemonize: true, incoming: true });
  assert.match(clone[clone.indexOf('-object') + 1]!, /share=off$/);
  assert.deepEqual(clone.slice(clone.indexOf('-incoming') - 1, clone.indexOf('-incoming') + 2), ['-S', '-incoming', 'defer']);
  assert.ok(!qemuArgs(spec, { daemonize: true }).includes('-incoming'));
  assert.throws(() => qemuArgs({ ...spec, memoryFile: { path: '/s/a,b', shared: true } }, { daemonize: true }));
});

test('confinement: seccomp without set*id only when QEMU stays root; -runas then -chroot; paused start', () => {
  const confined = qemuArgs(spec, { daemonize: false, paused: true, confinement: { seccomp: true, runAs: 'kiln-vmm', chroot: '/state/vms/vm-1/jail' } });
  assert.equal(confined[confined.indexOf('-sandbox') + 1], 'on,obsolete=deny,spawn=deny,resourcecontrol=deny');
  assert.equal(confined[confined.indexOf('-runas') + 1], 'kiln-vmm');
  assert.equal(confined[confined.indexOf('-chroot') + 1], '/state/vms/vm-1/jail');
  assert.ok(confined.includes('-S') && !confined.includes('-daemonize') && !confined.includes('-pidfile'));
  assert.deepEqual(sandboxArgs({ seccomp: true, runAs: null, chroot: '/j' }), ['-sandbox', 'on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny']);
  assert.deepEqual(sandboxArgs({ seccomp: false, runAs: 'u', chroot: null }), ['-runas', 'u']);
  assert.ok(!qemuArgs(spec, { daemonize: false }).includes('-S'));
});
