import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { VmSpec } from '../driver.ts';
import { hostTscKhz, kernelCmdline, qemuArgs } from './qemu-args.ts';

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
  assert.equal(a[a.indexOf('-accel') + 1], 'tcg');
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
