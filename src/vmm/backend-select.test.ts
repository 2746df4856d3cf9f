import assert from 'node:assert/strict';
import { test } from 'node:test';
import { isKilnError } from '../errors.ts';
import { decideBackend } from './backend-select.ts';

const kvm = { accelerator: 'kvm' as const, reason: 'KVM probe boot reached kiln-init' };
const tcg = { accelerator: 'tcg' as const, reason: 'the KVM probe guest did not reach kiln-init (timed out); using TCG (software CPU)' };
const has = (path: string | null) => async () => path;
const v113 = async () => 'Firecracker v1.13.1\n\nSupported snapshot data format versions: 5.0.0\n';

test('auto picks Firecracker when the binary is there and KVM boots a guest', async () => {
  const d = await decideBackend({ requested: 'auto', accel: kvm, versionOf: v113, find: has('/usr/local/bin/firecracker') });
  assert.equal(d.backend, 'firecracker');
  assert.equal(d.firecrackerBinary, '/usr/local/bin/firecracker');
  assert.match(d.reason, /^auto: \/usr\/local\/bin\/firecracker found and KVM boots a guest$/);
});

test('auto falls back to QEMU and names every reason (this development host: no binary, KVM hangs)', async () => {
  const d = await decideBackend({ requested: 'auto', accel: tcg, versionOf: v113, find: has(null) });
  assert.equal(d.backend, 'qemu');
  assert.equal(d.firecrackerBinary, undefined);
  assert.match(d.reason, /no firecracker binary on PATH \(install it or set KILN_FIRECRACKER_BIN\)/);
  assert.match(d.reason, /KVM does not boot a guest here \(the KVM probe guest did not reach kiln-init/);
  const noKvm = await decideBackend({ requested: 'auto', accel: tcg, versionOf: v113, find: has('/opt/firecracker') });
  assert.equal(noKvm.backend, 'qemu');
  assert.doesNotMatch(noKvm.reason, /binary/);
  const noBin = await decideBackend({ requested: 'auto', accel: kvm, versionOf: v113, find: has(null), firecrackerBinary: '/opt/fc/firecracker' });
  assert.match(noBin.reason, /Firecracker binary \/opt\/fc\/firecracker is missing or not executable/);
});

test('the configured binary is the one looked up', async () => {
  const asked: string[] = [];
  await decideBackend({ requested: 'auto', accel: kvm, firecrackerBinary: '/opt/fc/firecracker', find: async (n) => (asked.push(n), n) });
  assert.deepEqual(asked, ['/opt/fc/firecracker']);
});

test('an explicit firecracker request that cannot run refuses to start with the reasons', async () => {
  await assert.rejects(
    decideBackend({ requested: 'firecracker', accel: tcg, versionOf: v113, find: has(null) }),
    (e) => isKilnError(e) && e.code === 'KILN_ERR_HOST_SETUP' && /no firecracker binary/.test(e.message) && /kiln doctor/.test(e.message),
  );
  const ok = await decideBackend({ requested: 'firecracker', accel: kvm, versionOf: v113, find: has('/usr/bin/firecracker') });
  assert.equal(ok.backend, 'firecracker');
});

test('an explicit qemu request looks nothing up', async () => {
  const d = await decideBackend({ requested: 'qemu', accel: kvm, find: async () => assert.fail('no lookup') });
  assert.deepEqual(d, { backend: 'qemu', reason: 'QEMU requested by configuration' });
});

test('auto refuses a Firecracker older than 1.13 (the oldest API the driver is tested against), saying so', async () => {
  const old = async () => 'Firecracker v1.12.1\n';
  const d = await decideBackend({ requested: 'auto', accel: kvm, find: has('/usr/local/bin/firecracker'), versionOf: old });
  assert.equal(d.backend, 'qemu');
  assert.match(d.reason, /Firecracker 1\.12\.1 is older than 1\.13\.0, the oldest API kiln's driver is tested against/);
  await assert.rejects(
    decideBackend({ requested: 'firecracker', accel: kvm, find: has('/usr/local/bin/firecracker'), versionOf: old }),
    (e) => isKilnError(e) && e.code === 'KILN_ERR_HOST_SETUP' && /older than 1\.13\.0/.test(e.message),
  );
  const broken = await decideBackend({ requested: 'auto', accel: kvm, find: has('/usr/local/bin/firecracker'), versionOf: async () => 'garbage' });
  assert.equal(broken.backend, 'qemu');
  assert.match(broken.reason, /printed no version/);
  const ok = await decideBackend({ requested: 'auto', accel: kvm, find: has('/usr/local/bin/firecracker'), versionOf: async () => 'Firecracker v1.16.1' });
  assert.equal(ok.backend, 'firecracker');
});
