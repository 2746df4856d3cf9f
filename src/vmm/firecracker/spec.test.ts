import assert from 'node:assert/strict';
import { test } from 'node:test';
import { isKilnError } from '../../errors.ts';
import {
  apiIdFor,
  firecrackerKernelCmdline,
  instanceIdFor,
  networkInterfacesOf,
  toDrives,
  toMachineConfig,
  toMmdsConfig,
  toNetworkInterface,
  validateSpec,
  type FirecrackerVmSpec,
} from './spec.ts';

const spec = (extra: Partial<FirecrackerVmSpec> = {}): FirecrackerVmSpec => ({
  id: 'vm-1',
  runtimeDir: '/state/vms/vm-1',
  vcpus: 2,
  memoryMib: 256,
  accelerator: 'kvm',
  kernel: { path: '/k/vmlinux', initrd: '/k/initrd', cmdline: 'console=ttyS0' },
  drives: [
    { id: 'root', path: '/img/root.squashfs', readOnly: true },
    { id: 'scratch-1', path: '/vms/vm-1/scratch.ext4', readOnly: false },
  ],
  ...extra,
});

const invalid = (e: unknown) => isKilnError(e) && e.code === 'KILN_ERR_VALIDATION';

test('instance ids keep [A-Za-z0-9-] up to 64, anything else becomes a stable valid id', () => {
  assert.equal(instanceIdFor('vm-1'), 'vm-1');
  const odd = instanceIdFor('fn_hello.world/1');
  assert.match(odd, /^[A-Za-z0-9-]{1,64}$/);
  assert.equal(odd, instanceIdFor('fn_hello.world/1'));
  assert.notEqual(instanceIdFor('a.b'), instanceIdFor('a_b'), 'different ids stay different');
  assert.match(instanceIdFor('x'.repeat(100)), /^[A-Za-z0-9-]{1,64}$/);
});

test('API resource ids are limited to [A-Za-z0-9_]', () => {
  assert.equal(apiIdFor('root'), 'root');
  assert.equal(apiIdFor('scratch-1'), 'scratch_1');
  assert.equal(apiIdFor('a.b c'), 'a_b_c');
});

test('drives keep their order, none is a root device, read-only comes from the spec', () => {
  const s = spec({ driveOptions: { 'scratch-1': { rateLimiter: { bandwidth: { size: 1000, refillTimeMs: 100, oneTimeBurst: 10 } }, ioEngine: 'Async' } } });
  const d = toDrives(s, (p) => `/jail${p}`);
  assert.deepEqual(d, [
    { drive_id: 'root', path_on_host: '/jail/img/root.squashfs', is_root_device: false, is_read_only: true },
    {
      drive_id: 'scratch_1',
      path_on_host: '/jail/vms/vm-1/scratch.ext4',
      is_root_device: false,
      is_read_only: false,
      io_engine: 'Async',
      rate_limiter: { bandwidth: { size: 1000, refill_time: 100, one_time_burst: 10 } },
    },
  ]);
});

test('machine config and MMDS config map onto the API names', () => {
  assert.deepEqual(toMachineConfig(spec({ machine: { smt: false, trackDirtyPages: true } })), {
    vcpu_count: 2,
    mem_size_mib: 256,
    smt: false,
    track_dirty_pages: true,
  });
  const s = spec({ network: [{ ifaceId: 'eth-0', hostDevName: 'tap0' }], mmds: { data: {} } });
  assert.deepEqual(toMmdsConfig(s), { network_interfaces: ['eth_0'], version: 'V2' });
});

test('the MTU is only sent to a Firecracker that knows it', () => {
  assert.throws(() => toNetworkInterface({ ifaceId: 'eth0', hostDevName: 'tap0', mtu: 9000 }, false), /1\.16/);
  assert.equal(toNetworkInterface({ ifaceId: 'eth0', hostDevName: 'tap0', mtu: 9000 }, true).mtu, 9000);
  assert.equal('mtu' in toNetworkInterface({ ifaceId: 'eth0', hostDevName: 'tap0' }, true), false);
});

test('what Firecracker would refuse mid-boot is refused before anything is spawned', () => {
  validateSpec(spec());
  assert.throws(() => validateSpec(spec({ accelerator: 'tcg' })), (e) => isKilnError(e) && e.code === 'KILN_ERR_HOST_SETUP');
  assert.throws(() => validateSpec(spec({ vcpus: 33 })), invalid);
  assert.throws(() => validateSpec(spec({ vcpus: 3, machine: { smt: true } })), invalid);
  assert.throws(() => validateSpec(spec({ mmds: { data: {} } })), (e) => invalid(e) && /network interface/.test((e as Error).message));
  assert.throws(
    () => validateSpec(spec({ network: [{ ifaceId: 'eth0', hostDevName: 't' }], mmds: { networkInterfaces: ['eth1'] } })),
    invalid,
  );
  assert.throws(
    () =>
      validateSpec(
        spec({
          drives: [
            { id: 'a-b', path: '/1', readOnly: true },
            { id: 'a_b', path: '/2', readOnly: true },
          ],
        }),
      ),
    (e) => invalid(e) && /collide/.test((e as Error).message),
  );
  assert.throws(() => validateSpec(spec({ vsock: { guestCid: 2 } })), invalid);
  assert.throws(() => validateSpec(spec({ driveOptions: { nope: {} } })), invalid);
});

test('the common VmSpec nics become eth0, eth1, … in order; Firecracker network entries win; both is refused', () => {
  const nics = [
    { tap: 'kt-a', mac: '52:54:0a:76:00:02' },
    { tap: 'kt-b', mac: '52:54:0a:76:00:03' },
  ];
  assert.deepEqual(networkInterfacesOf(spec({ nics })), [
    { ifaceId: 'eth0', hostDevName: 'kt-a', guestMac: '52:54:0a:76:00:02' },
    { ifaceId: 'eth1', hostDevName: 'kt-b', guestMac: '52:54:0a:76:00:03' },
  ]);
  assert.deepEqual(networkInterfacesOf(spec({})), []);
  const own = [{ ifaceId: 'net0', hostDevName: 'tap0' }];
  assert.deepEqual(networkInterfacesOf(spec({ network: own })), own);
  assert.throws(() => validateSpec(spec({ nics, network: own })), invalid);
  // MMDS defaults to the first interface, whichever way it was given.
  assert.deepEqual(toMmdsConfig(spec({ nics, mmds: {} }))!.network_interfaces, ['eth0']);
  validateSpec(spec({ nics, mmds: {} }));
});

test('kernel command line: Firecracker’s documented arguments, never nomodule, then kiln’s', () => {
  const c = firecrackerKernelCmdline(['kiln.ip=10.0.0.2']);
  assert.match(c, /^console=ttyS0 reboot=k panic=1 pci=off /);
  assert.ok(c.endsWith(' kiln.ip=10.0.0.2'));
  assert.ok(!c.split(' ').includes('nomodule'));
  assert.ok(!c.includes('8250.nr_uarts=0'), 'the serial console stays');
  // x86 Firecracker exits on a guest reset (reboot=k), not on a power-off: kiln-init resets.
  assert.ok(c.split(' ').includes('kiln.shutdown=reboot') && c.split(' ').includes('reboot=k'));
  assert.ok(!c.includes('tsc_early_khz'), 'no TCG timing workaround: Firecracker is KVM only');
});
